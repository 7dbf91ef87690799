"""Reference values for tests/test_matmul.c: tg_matmul and tg_linear forward and
input gradients for an upstream gradient gout, in float64.
Run: /usr/bin/python3 tests/ref/gen_matmul.py"""
import torch

from refio import RefWriter, leaf

gen = torch.Generator().manual_seed(20240601)
w = RefWriter("matmul")


def matmul_case(name, sa, sb):
    a, b = leaf(*sa, gen=gen), leaf(*sb, gen=gen)
    out = torch.matmul(a, b)
    gout = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (out * gout).sum().backward()
    w.case(name, a=a, b=b, out=out, gout=gout, ga=a.grad, gb=b.grad)


def linear_case(name, sx, out_features, bias):
    x = leaf(*sx, gen=gen)
    wt = leaf(out_features, sx[-1], gen=gen)
    b = leaf(out_features, gen=gen) if bias else None
    out = torch.nn.functional.linear(x, wt, b)
    gout = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (out * gout).sum().backward()
    extra = dict(bias=b, gbias=b.grad) if bias else {}
    w.case(name, x=x, weight=wt, out=out, gout=gout, gx=x.grad, gweight=wt.grad,
           **extra)


matmul_case("mm_2d", (3, 4), (4, 5))
matmul_case("mm_1x1", (1, 1), (1, 1))
matmul_case("mm_batched", (2, 3, 4), (2, 4, 5))
matmul_case("mm_batch_shared_b", (2, 3, 4), (4, 5))
matmul_case("mm_shared_a_batch", (3, 4), (2, 4, 5))
matmul_case("mm_broadcast", (2, 1, 3, 4), (3, 4, 2))
matmul_case("mm_broadcast_unit", (1, 3, 2), (4, 1, 2, 5))
matmul_case("mm_vec_mat", (4,), (4, 3))
matmul_case("mm_mat_vec", (3, 4), (4,))
matmul_case("mm_dot", (4,), (4,))
matmul_case("mm_vec_batch", (4,), (2, 4, 3))
matmul_case("mm_batch_vec", (2, 3, 4), (4,))
matmul_case("mm_large", (17, 33), (33, 9))
linear_case("linear_2d_bias", (5, 4), 3, True)
linear_case("linear_3d_bias", (2, 3, 4), 5, True)
linear_case("linear_nobias", (3, 7), 2, False)
linear_case("linear_1d", (4,), 3, True)
w.save()
