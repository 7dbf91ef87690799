"""PyTorch references for NaN propagation (tests/data/hardening_core.txt).

Each case holds an input x with NaNs, an upstream gradient gy, the output y and the
gradient dx of one op: the activations, max over a dim (and its indices), max
pooling (the 2x2 fast path and a padded 3x3 window) and softmax. PyTorch propagates
NaN through all of them; max and max pooling pick a NaN's index. Run with
/tmp/torch2/bin/python (PyTorch 2.x)."""
import torch
import torch.nn.functional as F
from refio import RefWriter

gen = torch.Generator().manual_seed(20261201)
out = RefWriter("hardening_core")
nan = float("nan")


def with_nans(*shape, where):
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x.view(-1)[list(where)] = nan
    return x.requires_grad_(True)


def case(name, fn, x, **extra):
    y = fn(x)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(gy)
    out.case(name, x=x, gy=gy, y=y, dx=x.grad, **extra)


act = [nan, -1.5, -0.0, 0.0, 0.5, 2.0, nan, -3.0]
for name, fn in [("relu", torch.relu), ("leaky_relu", lambda t: F.leaky_relu(t, 0.1)),
                 ("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("gelu", F.gelu),
                 ("abs", torch.abs)]:
    case(name, fn, torch.tensor(act, dtype=torch.float64, requires_grad=True))

x = with_nans(3, 5, where=[1, 3, 10])  # row 0: two NaNs, row 2: one, row 1: none
v, i = torch.max(x, 1)
case("max_dim", lambda t: torch.max(t, 1).values, x, indices=i,
     argmax=torch.argmax(x.detach(), 1))
case("max_pool_2x2", lambda t: F.max_pool2d(t, 2), with_nans(1, 2, 4, 6, where=[0, 1, 9, 30, 31]))
case("max_pool_3x3_p1", lambda t: F.max_pool2d(t, 3, 1, 1),
     with_nans(1, 1, 4, 5, where=[2, 8, 9, 17]))
case("softmax", lambda t: torch.softmax(t, 1), with_nans(3, 4, where=[5]))
case("log_softmax", lambda t: torch.log_softmax(t, 1), with_nans(3, 4, where=[0, 11]))
out.save()
