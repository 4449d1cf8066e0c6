#!/usr/bin/env python3
"""Reference run of the Task2Vec head recipe in PyTorch, for `tests/embedding_head.rs`.

A fresh `nn.Linear(16, 4)` is trained on fixed random features with cross-entropy and
`torch.optim.Adam(lr, weight_decay)` (coupled L2, as the reference Task2Vec code) over explicit
mini-batches of row indices. The Rust test feeds the same initial head, features and batches to
`task2vec::head::fit_head_on_batches` and compares the final weights. The weight decay is large
(0.1) so that coupled and decoupled (AdamW) decay give clearly different results.

Run with Debian's torch (no safetensors module needed, the file is written by hand):

    /usr/bin/python3 tools/gen_head_fixture.py tests/data/head/adam_head.safetensors

Stack used for the committed file: Debian 12 python3-torch 1.13.1, numpy 1.24.2.
"""

import json
import struct
import sys

import numpy as np
import torch

N, FEATURES, CLASSES = 40, 16, 4
EPOCHS, BATCHES, BATCH = 3, 5, 8
LR, WEIGHT_DECAY = 0.01, 0.1


def write_safetensors(path, tensors, metadata):
    """Writes `tensors` (name -> numpy array, f32 or i64) with a string metadata map."""
    dtypes = {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}
    header = {"__metadata__": metadata}
    offset, blobs = 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": dtypes[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    features = torch.randn(N, FEATURES)
    labels = torch.randint(0, CLASSES, (N,))
    # Make the task learnable: shift each row towards its class direction.
    features[torch.arange(N), labels] += 2.0
    head = torch.nn.Linear(FEATURES, CLASSES)
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    batches = torch.randint(0, N, (EPOCHS, BATCHES, BATCH))

    opt = torch.optim.Adam(head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = torch.nn.CrossEntropyLoss()
    epoch_losses = []
    for epoch in range(EPOCHS):
        total = 0.0
        for b in range(BATCHES):
            idx = batches[epoch, b]
            opt.zero_grad()
            loss = loss_fn(head(features[idx]), labels[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        epoch_losses.append(total / (BATCHES * BATCH))

    tensors = {
        "features": features.numpy().astype(np.float32),
        "labels": labels.numpy().astype(np.int64),
        "weight0": w0.numpy().astype(np.float32),
        "bias0": b0.numpy().astype(np.float32),
        "batches": batches.numpy().astype(np.int64),
        "weight": head.weight.detach().numpy().astype(np.float32),
        "bias": head.bias.detach().numpy().astype(np.float32),
        "epoch_losses": np.array(epoch_losses, dtype=np.float32),
    }
    meta = {
        "lr": repr(LR),
        "weight_decay": repr(WEIGHT_DECAY),
        "torch": torch.__version__,
    }
    write_safetensors(out, tensors, meta)


if __name__ == "__main__":
    main()
