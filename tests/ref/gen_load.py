"""Checkpoints written by PyTorch for tests/test_load.c: the state_dict of an
nn.Sequential(Linear(4, 3), ReLU(), Linear(3, 2)) ("0.weight", "0.bias", "2.weight",
"2.bias") in several forms, and the model's output for an input x.

  tests/data/load_f32.safetensors   float32, plus a tensor "extra" no model has
  tests/data/load_f64.safetensors   float64
  tests/data/load_f16.safetensors   float16, names prefixed "module." (as a DDP
                                    model's state_dict), __metadata__ {epoch, note}
  tests/data/load_bf16.safetensors  bfloat16
  tests/data/load.txt               case f32/f64/f16/bf16: each tensor's values as
                                    float64 (after rounding to that dtype), the input x
                                    and the model's output (float64 model) `out`

Files are written with gen_checkpoint.safetensors_bytes (the package's bytes).
Run: /tmp/torch2/bin/python gen_load.py
"""
import os

import torch
import torch.nn as nn
from gen_checkpoint import write_safetensors
from refio import DATA, RefWriter


def main():
    torch.manual_seed(20261216)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    state = net.state_dict()
    w = RefWriter("load")
    forms = [("f32", torch.float32, "", None, {"extra": torch.ones(3)}),
             ("f64", torch.float64, "", None, {}),
             ("f16", torch.float16, "module.", {"epoch": "3", "note": "DDP run"}, {}),
             ("bf16", torch.bfloat16, "", None, {})]
    for tag, dtype, prefix, meta, extra in forms:
        tensors = {prefix + k: v.to(dtype) for k, v in state.items()}
        tensors.update(extra)
        path = os.path.join(DATA, f"load_{tag}.safetensors")
        write_safetensors(path, tensors, meta)
        print(f"wrote {path}")
        rounded = {k: v.to(dtype).double() for k, v in state.items()}
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
        model.load_state_dict(rounded)
        with torch.no_grad():
            out = model(x)
        w.case(tag, x=x, out=out, **{k.replace(".", "_"): v for k, v in rounded.items()})
    w.save()


if __name__ == "__main__":
    main()
