"""The PyTorch twins of examples/mnist.c and examples/segmentation.c.

Their state_dict names are the names of the C programs' var stores, so weights move
between them as safetensors files:

  python3 examples/pytorch_reference.py mnist --train-steps 200 --export m.safetensors
  build/examples/mnist --epochs 0 --load m.safetensors    # same test accuracy

  python3 examples/pytorch_reference.py segmentation --export s.safetensors
  build/examples/segmentation --epochs 0 --load s.safetensors

bench/train_step.py times these same classes against examples/nets.c.

Needs torch and numpy only (safetensors files are written by hand: an 8-byte header
length, a JSON header, then the raw little-endian tensors).
"""
import argparse
import gzip
import json
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class MnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.gn1 = nn.GroupNorm(8, 32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.gn2 = nn.GroupNorm(8, 64)
        self.fc = nn.Linear(64 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.gn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.gn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout),
                         nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                         nn.GroupNorm(8, cout), nn.ReLU())


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1, self.enc2, self.mid = block(3, 16), block(16, 32), block(32, 64)
        self.dec2, self.dec1 = block(96, 32), block(48, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1))
        return self.head(d1)


def save_safetensors(state_dict, path):
    header, blobs, offset = {}, [], 0
    for name, t in state_dict.items():
        data = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xff
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def idx_file(data_dir, name):
    path = os.path.join(data_dir, name)
    return path if os.path.exists(path) else path + ".gz"


def mnist(args):
    d = args.data
    x = torch.tensor(read_idx(idx_file(d, "train-images-idx3-ubyte")).copy())
    y = torch.tensor(read_idx(idx_file(d, "train-labels-idx1-ubyte")).copy()).long()
    tx = torch.tensor(read_idx(idx_file(d, "t10k-images-idx3-ubyte")).copy())
    ty = torch.tensor(read_idx(idx_file(d, "t10k-labels-idx1-ubyte")).copy()).long()
    prep = lambda a: (a.float() / 127.5 - 1).unsqueeze(1)  # noqa: E731
    net = MnistNet()
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    for step in range(args.train_steps):
        idx = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(net(prep(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(prep(tx[i:i + 1000])).argmax(1) == ty[i:i + 1000]).sum())
                      for i in range(0, len(tx), 1000))
    print(f"PyTorch test accuracy: {100 * correct / len(tx):.2f}% ({len(tx)} images)")
    return net


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["mnist", "segmentation"])
    p.add_argument("--export", metavar="FILE", help="write the weights (safetensors)")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--train-steps", type=int, default=0,
                   help="mnist: SGD steps of 64 images before exporting")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    net = mnist(args) if args.model == "mnist" else UNet()
    if args.export:
        save_safetensors(net.state_dict(), args.export)
        print(f"wrote {args.export}")


if __name__ == "__main__":
    main()
