#!/usr/bin/env python3
"""Attributes `perf script` call-graph samples (perf record --call-graph dwarf) to operations.

    perf script -i perf.data -F tid,ip,sym | tools/bench/perf_breakdown.py

Each sample is charged to the first category (in the order of `CATEGORIES`) that some frame of
its stack names: the probes' own operations first, then candle's kernels, then the allocator.
So the time a page fault or a GEMM takes is charged to the operation that caused it (a GEMM
inside candle's convolution counts as convolution). Work that rayon runs on its worker threads
keeps only the operation's own frames, not the caller's: a candle element-wise operation is
charged to "candle", whichever layer asked for it. The column `kernel` is the part of each share
spent in the Linux kernel (page faults, zeroing and unmapping fresh memory).
"""

import re
import sys
from collections import Counter

# (label, pattern), first match from the innermost frame outwards wins.
CATEGORIES = [
    ("ops: depthwise conv", r"task2vec::probe::ops::depthwise"),
    ("ops: im2col", r"task2vec::probe::ops::matmul::.*(Im2Col|im2col|col2im)"),
    ("ops: 1x1 conv / matmul (GEMM)", r"task2vec::probe::ops::matmul"),
    ("ops: batch norm (+ReLU6)", r"task2vec::probe::ops::batch_norm"),
    ("ops: relu6 / element-wise", r"task2vec::probe::ops"),
    ("resnet: conv (candle conv2d)", r"task2vec::probe::resnet::conv|conv2d_tiled|conv2d_im2col|conv2d_1x1"),
    ("resnet: max pool", r"task2vec::probe::resnet::max_pool"),
    ("candle: add (gradient accumulation, residuals)", r"vec_add|BinaryOp.*Add|Tensor::add\b"),
    ("candle: other binary ops", r"binary_map|vec_mul|vec_sub|vec_div|Tensor::(mul|sub|div)"),
    ("candle: unary ops / affine", r"unary_map|Affine|affine"),
    ("candle: reductions", r"ReduceSum|reduce|sum_impl|Tensor::sum|mean"),
    ("candle: copies / layout", r"copy_strided|copy2d|copy_strided_src|Tensor::(contiguous|cat|narrow|transpose|pad)"),
    ("candle: fills (zeros/ones)", r"zeros_impl|ones_impl|Tensor::(zeros|ones)|alloc_zeros|zeros_like|ones_like"),
    ("candle: matmul", r"cpu_backend::MatMul"),
    ("dataset decode / preprocess", r"task2vec::dataset"),
    ("free (munmap)", r"munmap|__munmap"),
    ("malloc", r"malloc|_int_free|cfree"),
]

# Charged only when one of the three innermost frames matches: every worker-thread stack holds
# rayon's registry frames further out.
IDLE = ("rayon idle / sync", re.compile(r"rayon_core::(sleep|latch)|futex|sched_yield|BarrierGuard"))


def main():
    compiled = [(label, re.compile(p)) for label, p in CATEGORIES]
    totals, kernel = Counter(), Counter()
    n = 0
    stack = []

    def flush():
        nonlocal n
        if not stack:
            return
        n += 1
        label = "other"
        if any(IDLE[1].search(f) for f in stack[:3]):
            label = IDLE[0]
        else:
            for name, rx in compiled:
                if any(rx.search(frame) for frame in stack):
                    label = name
                    break
        totals[label] += 1
        if stack[0].startswith("ffffffff"):
            kernel[label] += 1

    for line in sys.stdin:
        if not line.strip():
            flush()
            stack = []
        elif line.startswith(("\t", " " * 8)) and stack is not None and line[:1].isspace() and \
                re.match(r"\s+[0-9a-f]+ ", line):
            stack.append(line.strip())
        else:
            flush()
            stack = []
    flush()
    print(f"{n} samples")
    print("| share | kernel part | operation |")
    print("| ---: | ---: | --- |")
    for label, c in totals.most_common():
        print(f"| {100 * c / n:.1f}% | {100 * kernel[label] / n:.1f}% | {label} |")


if __name__ == "__main__":
    main()
