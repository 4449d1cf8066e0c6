#!/usr/bin/env python3
"""Reference outputs of torchvision ResNet-18/50 for the Rust conformance test `tests/resnet.rs`.

The weights are not shipped: every tensor is filled by a closed formula of its element index and a
seed derived from its name (see `synth`), which `tests/resnet.rs` re-implements bit for bit. The
formula works in exact integer arithmetic and IEEE-754 float64 (products, divisions and square roots
are correctly rounded in both languages) before one final rounding to float32, so both sides
build identical float32 weights.

The network runs in float64 on the float32 weights (exactly representable), on a batch of 2
formula-generated images at 32x32 and 64x64, with BN in eval mode and in train mode (batch
statistics; each run on a fresh copy, so running statistics never change). Loss: mean cross-entropy
against labels (7 i + 3) mod num_classes. Per run `s{size}.{mode}.` the file holds `features`,
`logits` (float32), `loss` and `grad_norms` (float64; one L2 norm per parameter in
`named_parameters()` order, listed in the metadata), `grad.{param}` (float32; the leading rows of
the gradient of a few parameters, at most 256 values each) and `grad.input` (float32; the top-left
16x16 of image 0, channel 0). `synth.*` holds the first values of a few weights, to tell a formula
mismatch apart from a network mismatch. ResNet-18 has 1000 classes, ResNet-50 10.

Run with Debian's torch (no safetensors module needed, the file is written by hand):

    /usr/bin/python3 tools/gen_resnet_fixture.py tests/data/resnet

Stack used for the committed files: Debian 12 python3-torch 1.13.1, python3-torchvision 0.14.1,
numpy 1.24.2.
"""

import copy
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torchvision

MASK64 = (1 << 64) - 1


def name_seed(name: str) -> int:
    """64-bit FNV-1a of the UTF-8 name."""
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def uniform(name: str, n: int) -> np.ndarray:
    """n float64 values in [0, 1): splitmix64 of (seed + index), top 53 bits."""
    with np.errstate(over="ignore"):
        z = np.uint64(name_seed(name)) + np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def synth(name: str, shape) -> np.ndarray:
    """The float32 value of parameter/buffer `name`, by kind (decided from the name)."""
    n = int(np.prod(shape)) if len(shape) > 0 else 1
    u = uniform(name, n)
    leaf = name.rsplit(".", 1)[-1]
    if name == "input":
        v = (u - 0.5) * math.sqrt(12.0)
    elif name == "fc.weight":
        v = (u - 0.5) * math.sqrt(12.0 / shape[1])
    elif name == "fc.bias":
        v = (u - 0.5) * 0.2
    elif len(shape) == 4:
        # He-uniform magnitude: variance 2 / fan_in.
        fan_in = shape[1] * shape[2] * shape[3]
        v = (u - 0.5) * math.sqrt(24.0 / fan_in)
    elif leaf == "weight":
        v = 0.5 + 0.5 * u
    elif leaf == "bias":
        v = (u - 0.5) * 0.2
    elif leaf == "running_mean":
        v = (u - 0.5) * 0.2
    elif leaf == "running_var":
        v = 0.5 + u
    else:
        raise ValueError(name)
    return v.astype(np.float32).reshape(shape)


def build(arch: str, num_classes: int):
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    sd = model.state_dict()
    new = {}
    for k, t in sd.items():
        if k.endswith("num_batches_tracked"):
            new[k] = torch.zeros((), dtype=torch.int64)
        else:
            new[k] = torch.from_numpy(synth(k, list(t.shape)))
    model.load_state_dict(new, strict=True)
    return model.double()


# Gradients stored in full (at most GRAD_ELEMS leading elements, whole rows of dim 0) besides the
# norm of every parameter's gradient.
GRAD_ELEMS = 256
BATCH = 2


def grad_names(arch):
    last = "layer4.1.bn2" if arch == "resnet18" else "layer4.2.bn3"
    return [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight",
        last + ".weight",
        "fc.bias",
    ]


def leading(t: torch.Tensor) -> torch.Tensor:
    row = int(np.prod(t.shape[1:])) if t.dim() > 1 else 1
    rows = max(1, min(t.shape[0], GRAD_ELEMS // row))
    return t[:rows]


def save_safetensors(path, tensors, metadata):
    """Minimal safetensors writer (Debian has no python3-safetensors)."""
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("int64"): "I64"}[a.dtype]
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/data/resnet"
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    for arch, num_classes in [("resnet18", 1000), ("resnet50", 10)]:
        pristine = build(arch, num_classes)
        names = [n for n, _ in pristine.named_parameters()]
        out = {}
        # A few weights as the formula gives them, so a formula mismatch is reported as such.
        for n in ["conv1.weight", "bn1.running_var", "fc.weight"]:
            out["synth." + n] = synth(n, list(pristine.state_dict()[n].shape)).reshape(-1)[:16]
        for size in [32, 64]:
            x = torch.from_numpy(synth("input", [BATCH, 3, size, size]).astype(np.float64))
            x.requires_grad_(True)
            labels = torch.tensor([(7 * i + 3) % num_classes for i in range(BATCH)])
            for mode in ["eval", "train"]:
                # A fresh copy each time: a train-mode pass updates the running statistics.
                model = copy.deepcopy(pristine)
                model.train(mode == "train")
                x.grad = None
                h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
                h = model.layer4(model.layer3(model.layer2(model.layer1(h))))
                feats = torch.flatten(model.avgpool(h), 1)
                logits = model.fc(feats)
                loss = torch.nn.functional.cross_entropy(logits, labels)
                loss.backward()
                key = f"s{size}.{mode}."
                out[key + "features"] = feats.detach().float().numpy()
                out[key + "logits"] = logits.detach().float().numpy()
                out[key + "loss"] = np.array([loss.item()])
                params = dict(model.named_parameters())
                out[key + "grad_norms"] = np.array([params[n].grad.norm().item() for n in names])
                for n in grad_names(arch):
                    out[key + "grad." + n] = leading(params[n].grad).float().numpy()
                out[key + "grad.input"] = x.grad[0, 0, :16, :16].float().numpy()
                print(arch, size, mode, "loss", loss.item(), "max|feature|", feats.abs().max().item())
        meta = {
            "arch": arch,
            "num_classes": str(num_classes),
            "batch": str(BATCH),
            "param_names": json.dumps(names),
            "labels": "(7 * i + 3) % num_classes",
            "generator": "tools/gen_resnet_fixture.py",
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        }
        path = os.path.join(out_dir, arch + ".safetensors")
        save_safetensors(path, out, meta)
        print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
