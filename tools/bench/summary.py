#!/usr/bin/env python3
"""Markdown tables from the JSON lines `tools/bench/run.sh` writes to target/bench/.

    tools/bench/summary.py [target/bench]

Every `<section>[-tag].jsonl` file is summarised, section by section.

speed*.jsonl: per configuration, the median over rounds of each side's stage rates and times,
and the ratios (PyTorch time / Rust time: above 1 means Rust is faster), also for the best
(shortest) run of each side, the least disturbed by other jobs on a shared machine. memory.jsonl: peak
RSS by side, configuration, image count and cache budget. layers.jsonl: per ResNet-18
convolution and batch norm, forward and backward seconds of each method, and the network
totals (each shape times the number of such layers in ResNet-18).
"""

import json
import os
import statistics
import sys
from collections import defaultdict


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def med(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def speed(rows):
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r["arch"], r["image_size"], r["images"])][r["side"]].append(r)
    print("| probe | px | images | side | runs | features img/s | head s | Fisher img/s "
          "| total s | peak RSS MiB | load1 |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    ratios = []
    for (arch, size, n), sides in groups.items():
        for side in ("rust", "pytorch-reference"):
            rs = sides.get(side, [])
            if not rs:
                continue
            loads = ", ".join(f"{r['load1_before']:.1f}" for r in rs)
            print(f"| {arch} | {size} | {n} | {side} | {len(rs)} "
                  f"| {med(rs, 'features_images_per_s'):.2f} | {med(rs, 'head_s'):.3f} "
                  f"| {med(rs, 'fisher_images_per_s'):.2f} | {med(rs, 'total_s'):.1f} "
                  f"| {med(rs, 'peak_rss_mib'):.0f} | {loads} |")
        if "rust" in sides and "pytorch-reference" in sides:
            ru, py = sides["rust"], sides["pytorch-reference"]
            best = lambda rs, k: min(r[k] for r in rs)  # noqa: E731
            ratios.append((arch, size, n,
                           med(ru, "features_images_per_s") / med(py, "features_images_per_s"),
                           med(ru, "fisher_images_per_s") / med(py, "fisher_images_per_s"),
                           med(py, "total_s") / med(ru, "total_s"),
                           best(py, "total_s") / best(ru, "total_s"),
                           med(ru, "peak_rss_mib") / med(py, "peak_rss_mib")))
    print()
    print("| probe | px | images | features speed-up | Fisher speed-up | per-embedding speed-up "
          "| same, best run of each side | peak RSS Rust / PyTorch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arch, size, n, f, fi, t, tb, m in ratios:
        print(f"| {arch} | {size} | {n} | {f:.2f}× | {fi:.2f}× | **{t:.2f}×** | {tb:.2f}× "
              f"| {m:.2f} |")
    print()


def memory(rows):
    print("| probe | px | images | side | input cache | Fisher img/s | total s | peak RSS MiB |")
    print("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: (r["arch"], r["side"], r.get("cache_budget_bytes", -1),
                                         r["images"])):
        cache = r.get("cache_budget_bytes")
        cache = "n/a" if cache is None else ("off" if cache == 0 else f"{cache >> 20} MiB")
        print(f"| {r['arch']} | {r['image_size']} | {r['images']} | {r['side']} | {cache} "
              f"| {r['fisher_images_per_s']:.2f} | {r['total_s']:.1f} "
              f"| {r['peak_rss_mib']:.0f} |")
    print()


def malloc(rows):
    groups = defaultdict(list)
    for r in rows:
        # Rust keeps freed memory unless told not to; PyTorch only with the glibc variables.
        if r["side"] == "rust":
            tuned = "T2V_RETAIN_FREED_MEMORY=0" not in r["command"]
        else:
            tuned = "MALLOC_MMAP_MAX_=0" in r["command"]
        groups[(r["arch"], r["image_size"], r["images"], r["side"], tuned)].append(r)
    print("| probe | px | images | side | allocator | runs | features img/s | Fisher img/s "
          "| total s | peak RSS MiB |")
    print("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for (arch, size, n, side, tuned), rs in groups.items():
        print(f"| {arch} | {size} | {n} | {side} | {'heap-kept' if tuned else 'default'} "
              f"| {len(rs)} | {med(rs, 'features_images_per_s'):.2f} "
              f"| {med(rs, 'fisher_images_per_s'):.2f} | {med(rs, 'total_s'):.1f} "
              f"| {med(rs, 'peak_rss_mib'):.0f} |")
    print()


def layer_table(rows, key, title):
    by = defaultdict(dict)
    order = []
    for r in rows:
        if key not in r:
            continue
        if r[key] not in by:
            order.append(r[key])
        by[r[key]][r["method"]] = r
    if not order:
        return
    methods = ("candle", "ops", "pytorch")
    print(f"| {title} | ×net | " + " | ".join(f"{m} fwd s | {m} bwd s" for m in methods) + " |")
    print("| --- | ---: | " + " | ".join("---: | ---:" for _ in methods) + " |")
    totals = defaultdict(lambda: [0.0, 0.0])
    for name in order:
        cells = []
        for m in methods:
            r = by[name].get(m)
            if r is None:
                cells.append("– | –")
                continue
            mark = "" if r.get("padding_matches_pytorch", True) else "*"
            cells.append(f"{r['forward_s']:.3f}{mark} | {r['backward_s']:.3f}{mark}")
            totals[m][0] += r["per_net"] * r["forward_s"]
            totals[m][1] += r["per_net"] * r["backward_s"]
        per_net = next(iter(by[name].values()))["per_net"]
        print(f"| {name} | {per_net} | " + " | ".join(cells) + " |")
    print("| **ResNet-18 total** | | " + " | ".join(
        f"**{totals[m][0]:.2f}** | **{totals[m][1]:.2f}**" for m in methods) + " |")
    print()


def layers(rows):
    layer_table(rows, "conv", "convolution")
    layer_table(rows, "bn", "batch norm + ReLU")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/bench"
    sections = {"speed": speed, "memory": memory, "malloc": malloc, "layers": layers}
    def order(file):
        stem = file.split(".")[0]
        section = stem.split("-")[0]
        return (list(sections).index(section) if section in sections else 99, stem)

    for file in sorted(os.listdir(out), key=order):
        name = file[:-len(".jsonl")] if file.endswith(".jsonl") else None
        fn = sections.get((name or "").split("-")[0])
        rows = load(os.path.join(out, file)) if fn else []
        if rows:
            print(f"### {name}\n")
            fn(rows)


if __name__ == "__main__":
    main()
