"""Reference cases for tg_upsample_nearest2d_cat: tests/data/upsample_cat.txt, the output
and gradients of torch.cat([F.interpolate(a, size=skip.shape[2:], mode="nearest"),
skip], 1) in float64 from inputs exactly representable in float32. Run with a PyTorch
venv: /tmp/torch2/bin/python (README)."""
import torch
import torch.nn.functional as F

from refio import RefWriter

gen = torch.Generator().manual_seed(20261202)


def rnd(*shape):
    t = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return t.float().double().requires_grad_(True)  # representable in float32


def case(w, name, a_shape, skip_shape):
    a, skip = rnd(*a_shape), rnd(*skip_shape)
    y = torch.cat([F.interpolate(a, size=skip_shape[2:], mode="nearest"), skip], 1)
    dy = torch.randn(*y.shape, generator=gen, dtype=torch.float64).float().double()
    da, dskip = torch.autograd.grad(y, [a, skip], dy)
    w.case(name, a=a, skip=skip, dy=dy, y=y, da=da, dskip=dskip)


w = RefWriter("upsample_cat")
case(w, "x2", (2, 3, 4, 5), (2, 2, 8, 10))
case(w, "x3_x1", (1, 2, 3, 4), (1, 3, 9, 4))
case(w, "same_size", (2, 1, 3, 3), (2, 2, 3, 3))
w.save()
