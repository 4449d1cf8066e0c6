#!/usr/bin/env python3
"""Attributes `perf script` call-graph samples (perf record --call-graph dwarf) to operations.

    perf script -i perf.data -F tid,ip,sym | tools/bench/perf_breakdown.py

Each sample is charged to the innermost frame of its stack that names a known operation (the
probes' custom ops, candle's kernels, the allocator), so the time a page fault or a GEMM takes
is charged to the operation that caused it. The column `kernel` is the part of each share
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
    ("candle: matmul (head)", r"cpu_backend::MatMul"),
    ("dataset decode / preprocess", r"task2vec::dataset"),
    ("free (munmap)", r"munmap|__munmap"),
    ("malloc", r"malloc|_int_free|cfree"),
    ("rayon idle / sync", r"rayon_core::(registry|sleep|latch)|crossbeam|futex|sched_yield|BarrierGuard"),
]


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
        for frame in stack:
            for name, rx in compiled:
                if rx.search(frame):
                    label = name
                    break
            if label != "other":
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
