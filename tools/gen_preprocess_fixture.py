#!/usr/bin/python3
"""Generates tests/data/preprocess/: Pillow's resize + centre crop, the reference that
`Preprocess::apply` must reproduce exactly.

Run from anywhere with Debian's Python (Pillow 9.4, as the PyTorch conformance fixtures):
    /usr/bin/python3 tools/gen_preprocess_fixture.py

Both sides must start from identical pixels, and JPEG decoders differ (libjpeg vs zune-jpeg),
so the fixture ships its sources as PNG: a 201x151 patch of a foolbox ImageNet photo (odd sizes,
so the crop offsets hit Python's round-half-to-even) and one 28x28 MNIST digit. Each case's
expected output (resized and cropped, before normalisation) is saved as a lossless PNG too,
and `pillow_reference.json` lists the cases with their sizes and crop offsets.

If torchvision is importable, every case is also run through
`transforms.Resize(s) + transforms.CenterCrop(c)` and must agree with the manual Pillow steps.
"""
import json
import os

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOOLBOX = os.path.join(ROOT, "assets", "pypi", "foolbox", "data")
OUT = os.path.join(ROOT, "tests", "data", "preprocess")


def reference(img, resize_shorter, crop):
    """torchvision's Resize(int) + CenterCrop(int), spelled out with Pillow."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize_shorter, int(resize_shorter * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = img.resize((new_w, new_h), Image.BILINEAR)
    left = int(round((new_w - crop) / 2.0))
    top = int(round((new_h - crop) / 2.0))
    return resized.crop((left, top, left + crop, top + crop)), (new_w, new_h), (left, top)


def main():
    os.makedirs(OUT, exist_ok=True)
    photo = Image.open(os.path.join(FOOLBOX, "imagenet_10_541.jpg")).convert("RGB")
    photo.crop((400, 200, 601, 351)).save(os.path.join(OUT, "patch.png"), optimize=True)
    digit = Image.open(os.path.join(FOOLBOX, "mnist_00_7.png"))
    digit.save(os.path.join(OUT, "digit.png"), optimize=True)

    try:
        from torchvision import transforms
    except ImportError:
        transforms = None

    cases = []
    for source, resize_shorter, crop in [
        ("patch.png", 64, 56),   # shrink by 2.36 (antialiased), non-square
        ("patch.png", 97, 92),   # 129x97: left = round(18.5) = 18, top = round(2.5) = 2 (half to even)
        ("patch.png", 224, 200), # enlarge
        ("digit.png", 64, 64),   # the MNIST convention of the Fisher fixture
        ("digit.png", 256, 224), # EfficientNet-Lite's sizes on a small grey image
    ]:
        img = Image.open(os.path.join(OUT, source)).convert("RGB")
        out, resized, offset = reference(img, resize_shorter, crop)
        if transforms is not None:
            tv = transforms.CenterCrop(crop)(transforms.Resize(resize_shorter)(img))
            assert list(tv.getdata()) == list(out.getdata()), (source, resize_shorter, crop)
        expected = "expected_%s_%d_%d.png" % (source[:-4], resize_shorter, crop)
        out.save(os.path.join(OUT, expected), optimize=True)
        cases.append({
            "source": source,
            "source_size": list(img.size),
            "resize_shorter": resize_shorter,
            "crop": crop,
            "resized_size": list(resized),
            "crop_offset": list(offset),
            "expected": expected,
        })
    with open(os.path.join(OUT, "pillow_reference.json"), "w") as f:
        json.dump({"pillow": Image.__version__ if hasattr(Image, "__version__") else None,
                   "checked_against_torchvision": transforms is not None,
                   "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
