#!/usr/bin/env python3
"""A/B of bench_embed builds on one machine, runs interleaved so both see the same noise.

Usage: tools/bench/ab.py SIZE IMAGES RUNS BINARY... [--probe ARCH WEIGHTS] [--env VAR=VALUE ...]

Each BINARY is a copy of target/release/examples/bench_embed saved after building one
variant (e.g. `cp target/release/examples/bench_embed /tmp/be_before`). Every round runs each
binary once on /tmp/t2v-bench/fmnist-IMAGES at SIZE px with 2 threads; the summary gives the
minimum and median of the whole embedding and the minimum of each stage.
"""
import json
import os
import statistics
import subprocess
import sys


def main():
    args = sys.argv[1:]
    probe = ["resnet18", "/tmp/t2v-bench/resnet18.safetensors"]
    if "--probe" in args:
        i = args.index("--probe")
        probe = args[i + 1 : i + 3]
        del args[i : i + 3]
    env = dict(os.environ)
    while "--env" in args:
        i = args.index("--env")
        key, value = args[i + 1].split("=", 1)
        env[key] = value
        del args[i : i + 2]
    size, images, runs, binaries = args[0], args[1], int(args[2]), args[3:]
    results = {b: [] for b in binaries}
    for _ in range(runs):
        for b in binaries:
            cmd = [b, "--probe", probe[0], "--weights", probe[1], "--data",
                   f"/tmp/t2v-bench/fmnist-{images}", "--size", size, "--threads", "2"]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            line = [l for l in out.splitlines() if l.startswith("{")][-1]
            results[b].append(json.loads(line))
    for b in binaries:
        r = results[b]
        total = [d["total_s"] for d in r]
        print(f"{b}: total min {min(total):.2f} s, median {statistics.median(total):.2f} s; "
              f"features min {min(d['features_s'] for d in r):.2f} s; "
              f"Fisher min {min(d['fisher_s'] for d in r):.2f} s; "
              f"peak RSS {max(d['peak_rss_mib'] for d in r):.0f} MiB")


if __name__ == "__main__":
    main()
