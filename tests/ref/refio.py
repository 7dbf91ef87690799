"""Writes reference cases for the C tests: tests/data/<family>.txt.

Format (whitespace separated, read by tests/common.c):
    case NAME
    tensor LABEL f64|f32|i64 NDIM D0 D1 ...
    v0 v1 ...
    note LABEL text to the end of the line
    end
f32 values are float32-exact and read as float32 (gen_opinfo.py).
Values are float64 printed with 17 significant digits, so float64 tests can compare
to ~1e-12.
"""
import os
import torch

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")


class RefWriter:
    def __init__(self, family):
        self.path = os.path.join(DATA, family + ".txt")
        self.lines = []

    def case(self, name, **tensors):
        self.lines.append(f"case {name}")
        for label, t in tensors.items():
            t = torch.as_tensor(t).detach()
            kind = "i64" if not t.is_floating_point() else "f64"
            dims = " ".join(str(d) for d in t.shape)
            self.lines.append(f"tensor {label} {kind} {t.dim()} {dims}".rstrip())
            flat = t.reshape(-1).tolist()
            if kind == "i64":
                vals = [str(int(v)) for v in flat]
            else:
                vals = [repr(float(v)) for v in flat]
            for i in range(0, len(vals), 8):
                self.lines.append(" ".join(vals[i:i + 8]))
        self.lines.append("end")

    def save(self):
        os.makedirs(DATA, exist_ok=True)
        with open(self.path, "w") as f:
            f.write("\n".join(self.lines) + "\n")
        print(f"wrote {self.path}")


def leaf(*shape, gen, scale=1.0, offset=0.0):
    """A float64 leaf drawn from a seeded generator."""
    return (torch.randn(tuple(shape), generator=gen, dtype=torch.float64) * scale
            + offset).requires_grad_(True)
