"""Reference values for tests/test_loss.c: softmax, log_softmax and the losses,
forward and input gradients for an upstream gradient gout, in float64. Each case
names its op by prefix (softmax_, logsoftmax_, ce_, nll_, mse_, bce_); dim,
reduction (0 none, 1 mean, 2 sum) and ignore_index are stored as int64 scalars.
Run: /usr/bin/python3 tests/ref/gen_loss.py"""
import torch
import torch.nn.functional as F

from refio import RefWriter, leaf

gen = torch.Generator().manual_seed(7)
w = RefWriter("loss")
RED = {0: "none", 1: "mean", 2: "sum"}


def finish(name, out, inputs, **extra):
    gout = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (out * gout).sum().backward()
    grads = {"g" + k: v.grad for k, v in inputs.items() if v.requires_grad}
    w.case(name, **inputs, **extra, out=out, gout=gout, **grads)


def softmax_case(name, shape, dim, log):
    x = leaf(*shape, gen=gen, scale=3.0)
    out = F.log_softmax(x, dim) if log else F.softmax(x, dim)
    finish(name, out, dict(x=x), dim=torch.tensor(dim))


def targets(shape, classes, ignore=None, n_ignored=0):
    t = torch.randint(0, classes, shape, generator=gen)
    flat = t.view(-1)
    for i in range(n_ignored):
        flat[(3 * i + 1) % flat.numel()] = ignore
    return t


def class_case(name, op, shape, red, ignore=-100, n_ignored=0, scale=1.0):
    x = leaf(*shape, gen=gen, scale=scale)
    classes = shape[0] if len(shape) == 1 else shape[1]
    tshape = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    t = targets(tshape, classes, ignore, n_ignored)
    if op == "nll":
        logp = F.log_softmax(x.detach(), 0 if len(shape) == 1 else 1).requires_grad_()
        out = F.nll_loss(logp, t, reduction=RED[red], ignore_index=ignore)
        finish(name, out, dict(x=logp), target=t, reduction=torch.tensor(red),
               ignore=torch.tensor(ignore))
    else:
        out = F.cross_entropy(x, t, reduction=RED[red], ignore_index=ignore)
        finish(name, out, dict(x=x), target=t, reduction=torch.tensor(red),
               ignore=torch.tensor(ignore))


def pointwise_case(name, op, shape, red, scale=1.0):
    x = leaf(*shape, gen=gen, scale=scale)
    if op == "mse":
        t = leaf(*shape, gen=gen)
        out = F.mse_loss(x, t, reduction=RED[red])
    else:
        t = torch.rand(shape, generator=gen, dtype=torch.float64).requires_grad_()
        out = F.binary_cross_entropy_with_logits(x, t, reduction=RED[red])
    finish(name, out, dict(x=x, t=t), reduction=torch.tensor(red))


softmax_case("softmax_last", (3, 5), -1, False)
softmax_case("softmax_mid", (2, 4, 3), 1, False)
softmax_case("softmax_first", (3, 2), 0, False)
softmax_case("softmax_wide", (2, 7, 70), 1, False)
softmax_case("logsoftmax_last", (4, 6), 1, True)
softmax_case("logsoftmax_mid", (2, 3, 2, 2), 1, True)
softmax_case("logsoftmax_0d", (), 0, True)
class_case("ce_mean", "ce", (6, 5), 1)
class_case("ce_mean_ignore", "ce", (7, 4), 1, ignore=-100, n_ignored=2)
class_case("ce_sum", "ce", (5, 3), 2)
class_case("ce_none_ignore", "ce", (5, 3), 0, ignore=-100, n_ignored=1)
class_case("ce_4d", "ce", (2, 3, 4, 5), 1, ignore=1, n_ignored=3)
class_case("ce_3d_none", "ce", (2, 4, 3), 0)
class_case("ce_1d", "ce", (5,), 1)
class_case("ce_large_logits", "ce", (4, 6), 1, scale=1e4)
class_case("nll_mean_ignore", "nll", (6, 4), 1, ignore=-100, n_ignored=2)
class_case("nll_sum", "nll", (4, 3), 2)
class_case("nll_4d_none", "nll", (2, 3, 2, 3), 0, ignore=0, n_ignored=2)
class_case("nll_3d_mean", "nll", (3, 4, 5), 1)
pointwise_case("mse_mean", "mse", (3, 4), 1)
pointwise_case("mse_sum", "mse", (5,), 2)
pointwise_case("mse_none", "mse", (2, 3, 2), 0)
pointwise_case("bce_mean", "bce", (4, 3), 1, scale=3.0)
pointwise_case("bce_sum", "bce", (6,), 2, scale=3.0)
pointwise_case("bce_none_large", "bce", (2, 5), 0, scale=40.0)
w.save()
