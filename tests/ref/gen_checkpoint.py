"""A PyTorch-written safetensors checkpoint and its expected outputs, for
tests/test_checkpoint.c: tests/data/model.safetensors and tests/data/checkpoint.txt.

Debian ships no `safetensors` Python package, so write_safetensors() below writes the
format by hand, following the safetensors spec and the reference implementation
byte for byte:
  - 8 bytes: little-endian u64 N, the header length;
  - N bytes: compact UTF-8 JSON (no spaces, serde_json escaping), "__metadata__"
    first when given, then one entry per tensor,
        "name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
    in data order: sorted by dtype (descending in the Dtype enum: I64, F64, F32, ...)
    then by name; the header is padded with spaces to a multiple of 8 bytes;
  - the data buffer: each tensor's little-endian bytes, row-major, back to back.
When the real package is importable (e.g. PYTHONPATH with a `pip download
safetensors` wheel unpacked in it), the script checks that safetensors.torch.save_file
writes the very same bytes, and that load_file reads them back.

The model (conv + group norm + conv + batch norm + linear) uses PyTorch's default
init; its batch norm ran a few training batches so its running stats are not the
initial 0 and 1. checkpoint.txt holds an input `x` and the model's eval-mode output
`out`. Run: /usr/bin/python3 gen_checkpoint.py
"""
import json
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F
from refio import DATA, RefWriter

# safetensors' Dtype enum order (data and header are sorted by it, descending).
DTYPES = [(torch.bool, "BOOL"), (torch.uint8, "U8"), (torch.int8, "I8"),
          (torch.int16, "I16"), (torch.float16, "F16"), (torch.bfloat16, "BF16"),
          (torch.int32, "I32"), (torch.float32, "F32"), (torch.float64, "F64"),
          (torch.int64, "I64")]
RANK = {t: i for i, (t, _) in enumerate(DTYPES)}
NAME = dict(DTYPES)


def safetensors_bytes(tensors, metadata=None):
    """The bytes safetensors.torch.save_file(tensors, path, metadata) writes."""
    items = sorted(tensors.items(), key=lambda kv: (-RANK[kv[1].dtype], kv[0]))
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata  # the package's order is a hash map's
    for name, t in items:
        t = t.detach().contiguous().cpu()
        # Little-endian bytes of the row-major elements (numpy keeps host order; all
        # machines we run on are little-endian, which the assert guards).
        assert struct.pack("=H", 1) == b"\x01\x00"
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": NAME[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def write_safetensors(path, tensors, metadata=None):
    data = safetensors_bytes(tensors, metadata)
    with open(path, "wb") as f:
        f.write(data)
    return data


def check_against_package(path, tensors, data):
    try:
        from safetensors.torch import load_file, save_file
    except ImportError:
        print("safetensors package not importable: hand-written format not cross-checked")
        return
    ref = path + ".ref"
    save_file(tensors, ref)
    with open(ref, "rb") as f:
        same = f.read() == data
    assert same, "hand-written file differs from safetensors.torch.save_file's"
    back = load_file(path)
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    # Escaping, metadata, every dtype, empty and 0-dim tensors.
    odd = {f"{t}".split(".")[1]: torch.ones(2, 1, dtype=t) for t, _ in DTYPES}
    odd.update({"a\"b\\c\n\x01\u00e9/z": torch.zeros(0, 3), "s": torch.tensor(7.5)})
    meta = {"a": "q\"\t\u00e9"}  # one key: the package orders keys by hash
    save_file(odd, ref, metadata=meta)
    with open(ref, "rb") as f:
        assert f.read() == safetensors_bytes(odd, meta)
    os.remove(ref)
    print("identical to safetensors.torch.save_file, and load_file reads it back")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Module()
        self.enc.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.enc.gn = nn.GroupNorm(2, 8)
        self.enc.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.enc.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.enc.gn(self.enc.conv1(x)))
        x = F.relu(self.enc.bn(self.enc.conv2(x)))
        return self.head(torch.flatten(x, 1))


def main():
    torch.manual_seed(20261203)
    net = Net()
    with torch.no_grad():  # affine group norm parameters away from 1 and 0
        net.enc.gn.weight.copy_(torch.rand(8) + 0.5)
        net.enc.gn.bias.copy_(torch.randn(8) * 0.1)
        net.train()
        for _ in range(3):
            net(torch.randn(4, 3, 8, 8) * 1.5 + 0.3)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = net(x)
    state = net.state_dict()
    path = os.path.join(DATA, "model.safetensors")
    data = write_safetensors(path, state)
    print(f"wrote {path} ({len(data)} bytes, {len(state)} tensors)")
    check_against_package(path, state, data)

    w = RefWriter("checkpoint")
    w.case("model", x=x, out=out)
    w.save()


if __name__ == "__main__":
    main()
