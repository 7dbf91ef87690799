"""PyTorch references for the pooling and upsampling ops (tests/data/pool.txt).

Each case holds x, an upstream gradient gy, the output y, the gradient dx and
`params` (i64): op (0 max, 1 avg, 2 adaptive avg, 3 nearest, 4 bilinear), then
kernel h w, stride h w, padding h w for pooling, or output size h w otherwise.
Run with /usr/bin/python3 (torch 1.13)."""
import torch
import torch.nn.functional as F
from refio import RefWriter, leaf

gen = torch.Generator().manual_seed(20240602)
out = RefWriter("pool")


def case(name, op, x_shape, *args):
    x = leaf(*x_shape, gen=gen)
    if op == 0:
        k, s, p = args
        y = F.max_pool2d(x, k, s, p)
    elif op == 1:
        k, s, p = args
        y = F.avg_pool2d(x, k, s, p)
    elif op == 2:
        y = F.adaptive_avg_pool2d(x, args[0])
    elif op == 3:
        y = F.interpolate(x, size=args[0], mode="nearest")
    else:
        y = F.interpolate(x, size=args[0], mode="bilinear", align_corners=False)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(gy)
    flat = [v for a in args for v in a]
    params = torch.tensor([op, *flat], dtype=torch.int64)
    out.case(name, params=params, x=x, gy=gy, y=y, dx=x.grad)


case("max_2x2", 0, (2, 3, 6, 7), (2, 2), (2, 2), (0, 0))
case("max_3x3_s2_p1", 0, (1, 2, 7, 7), (3, 3), (2, 2), (1, 1))
case("max_overlap_nonsquare", 0, (2, 2, 5, 6), (3, 2), (1, 2), (1, 0))
case("max_1x1", 0, (1, 2, 3, 4), (1, 1), (1, 1), (0, 0))
case("avg_2x2", 1, (2, 3, 6, 7), (2, 2), (2, 2), (0, 0))
case("avg_3x3_s2_p1", 1, (1, 2, 7, 7), (3, 3), (2, 2), (1, 1))
case("avg_overlap_nonsquare", 1, (2, 2, 5, 6), (3, 2), (1, 2), (1, 0))
case("adaptive_3x3_of_7x7", 2, (2, 3, 7, 7), (3, 3))
case("adaptive_2x4_of_5x9", 2, (1, 2, 5, 9), (2, 4))
case("adaptive_global", 2, (2, 4, 3, 5), (1, 1))
case("adaptive_up_4x5_of_3x3", 2, (1, 2, 3, 3), (4, 5))
case("nearest_double", 3, (2, 2, 3, 4), (6, 8))
case("nearest_odd", 3, (1, 3, 4, 4), (7, 5))
case("nearest_down", 3, (1, 2, 5, 5), (3, 2))
case("nearest_3x", 3, (1, 1, 3, 5), (9, 13))
case("bilinear_double", 4, (2, 2, 3, 4), (6, 8))
case("bilinear_odd", 4, (1, 3, 4, 4), (7, 5))
case("bilinear_down", 4, (1, 2, 5, 6), (3, 4))
case("bilinear_from_1x1", 4, (1, 2, 1, 1), (3, 3))
case("bilinear_same", 4, (1, 2, 4, 4), (4, 4))
out.save()
