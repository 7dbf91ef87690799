"""Reference cases for tg_group_norm_relu: tests/data/group_norm_relu.txt, the output and
gradients of F.relu(F.group_norm(x, G, w, b, eps)) in float64 from inputs exactly
representable in float32. Run with a PyTorch venv: /tmp/torch2/bin/python (README).

Cases: 4-d and 3-d inputs, with and without weight/bias, one group and one channel
per group, and a negative bias that zeroes most of the outputs."""
import torch
import torch.nn.functional as F

from refio import RefWriter

gen = torch.Generator().manual_seed(20261201)


def rnd(*shape, scale=1.0, offset=0.0):
    t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + offset
    return t.float().double()  # representable in float32


def case(w, name, shape, groups, weight=True, bias=True, bias_offset=0.0):
    c = shape[1]
    x = rnd(*shape, scale=2.0, offset=0.5).requires_grad_(True)
    inputs = {"x": x}
    wt = rnd(c, scale=0.5, offset=1.0).requires_grad_(True) if weight else None
    bt = rnd(c, scale=0.5, offset=bias_offset).requires_grad_(True) if bias else None
    y = F.relu(F.group_norm(x, groups, wt, bt, 1e-5))
    dy = rnd(*y.shape)
    need = [t for t in (x, wt, bt) if t is not None]
    gs = list(torch.autograd.grad(y, need, dy))
    out = {"x": x, "dy": dy, "y": y, "dx": gs.pop(0)}
    if wt is not None:
        out["w"], out["dw"] = wt, gs.pop(0)
    if bt is not None:
        out["b"], out["db"] = bt, gs.pop(0)
    out["groups"] = torch.tensor([groups])
    w.case(name, **out)


w = RefWriter("group_norm_relu")
case(w, "basic", (2, 6, 4, 5), 3)
case(w, "unet_like", (2, 16, 8, 8), 8)
case(w, "three_d", (3, 8, 7), 4, bias=False)
case(w, "no_affine", (2, 4, 3, 3), 2, weight=False, bias=False)
case(w, "g1", (2, 5, 3, 3), 1)
case(w, "g_eq_c", (2, 6, 3), 6)
case(w, "mostly_zero", (2, 8, 5, 5), 4, bias_offset=-1.5)
w.save()
