"""PyTorch references for resampling 1 to 3 spatial dims (tg_upsample_*{1,2,3}d_ex):
tests/data/resample.txt. Each case holds x, an upstream gradient gy, the output y of
F.interpolate, the gradient dx, `params` (i64: mode 0 nearest / 1 linear, spatial dims,
align_corners, recompute_scale_factor, size[3]) and `scale` (f64 [3], 0 for by size).
Inputs are float32-exact, so the float32 replay sees the same values.
Run with /tmp/torch2/bin/python tests/ref/gen_resample.py (README)."""
import torch
import torch.nn.functional as F

from refio import RefWriter

gen = torch.Generator().manual_seed(20261201)
out = RefWriter("resample")
MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def case(name, mode, shape, size=None, scale=None, align=False, recompute=False):
    nsp = len(shape) - 2
    x = torch.randn(shape, generator=gen, dtype=torch.float64).float().double()
    x.requires_grad_(True)
    md = "nearest" if mode == 0 else MODES[nsp]
    kw = dict(mode=md)
    if mode == 1:
        kw["align_corners"] = align
    if size is not None:
        kw["size"] = size
    else:
        kw["scale_factor"] = scale
        kw["recompute_scale_factor"] = recompute
    y = F.interpolate(x, **kw)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).float().double()
    y.backward(gy)
    sizes = list(size or []) + [0] * (3 - len(size or []))
    scales = list(scale or []) + [0.0] * (3 - len(scale or []))
    params = torch.tensor([mode, nsp, int(align), int(recompute), *sizes])
    out.case(name, params=params, scale=torch.tensor(scales, dtype=torch.float64), x=x,
             gy=gy, y=y, dx=x.grad)


for mode, m in ((0, "nearest"), (1, "linear")):
    case(f"{m}1d_up", mode, (2, 3, 5), size=(12,))
    case(f"{m}1d_down", mode, (1, 2, 9), size=(4,))
    case(f"{m}1d_scale", mode, (2, 2, 4), scale=(1.7,))
    case(f"{m}1d_scale_recompute", mode, (1, 3, 6), scale=(2.5,), recompute=True)
    case(f"{m}2d_scale", mode, (1, 2, 3, 5), scale=(2.0, 1.5))
    case(f"{m}3d_up", mode, (1, 2, 2, 3, 4), size=(4, 5, 7))
    case(f"{m}3d_down", mode, (2, 1, 5, 4, 6), size=(3, 2, 4))
    case(f"{m}3d_scale", mode, (1, 2, 3, 2, 3), scale=(2.0, 1.5, 0.7))
    case(f"{m}3d_scale_recompute", mode, (1, 1, 3, 3, 2), scale=(1.3, 2.0, 2.5),
         recompute=True)
case("linear1d_align", 1, (2, 2, 5), size=(9,), align=True)
case("linear1d_align_to_1", 1, (1, 2, 4), size=(1,), align=True)
case("linear3d_align", 1, (1, 2, 3, 2, 4), size=(5, 3, 7), align=True)
case("nearest3d_same", 0, (1, 2, 2, 3, 2), size=(2, 3, 2))
out.save()
