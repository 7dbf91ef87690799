"""Reference trajectories of torch.optim.SGD / Adam / AdamW for tests/test_optim.c.

The problem is a small linear regression, pred = sum(x * w, dim 1) + b and
loss = mean((pred - y)^2), with w [1, 4], b [1] and a parameter `u` [3] that never
gets a gradient (optimizers must leave it alone). Each case starts from the same
w0, b0, u0 and records the parameters after each of 5 steps (w1..w5, b1..b5) and the
loss before each step (loss1..loss5). Run: /usr/bin/python3 gen_optim.py
"""
import torch
from refio import RefWriter

STEPS = 5
g = torch.Generator().manual_seed(20261201)
x = torch.randn(8, 4, generator=g, dtype=torch.float64)
y = torch.randn(8, generator=g, dtype=torch.float64)
w0 = torch.randn(1, 4, generator=g, dtype=torch.float64)
b0 = torch.randn(1, generator=g, dtype=torch.float64)
u0 = torch.randn(3, generator=g, dtype=torch.float64)


def run(w, name, make_opt, lr_at=None, clip=None):
    wp = w0.clone().requires_grad_(True)
    bp = b0.clone().requires_grad_(True)
    up = u0.clone().requires_grad_(True)
    opt = make_opt([wp, bp, up])
    out = dict(x=x, y=y, w0=w0, b0=b0, u0=u0)
    for k in range(1, STEPS + 1):
        if lr_at is not None and k == lr_at[0]:
            for group in opt.param_groups:
                group["lr"] = lr_at[1]
        opt.zero_grad(set_to_none=True)
        loss = (((x * wp).sum(1) + bp - y) ** 2).mean()
        loss.backward()
        if clip is not None:
            out[f"norm{k}"] = torch.nn.utils.clip_grad_norm_([wp, bp, up], clip)
        opt.step()
        out[f"loss{k}"] = loss.detach()
        out[f"w{k}"] = wp.detach().clone()
        out[f"b{k}"] = bp.detach().clone()
    assert torch.equal(up.detach(), u0)
    w.case(name, **out)


def main():
    w = RefWriter("optim")
    SGD, Adam, AdamW = torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW
    run(w, "sgd", lambda p: SGD(p, lr=0.1))
    run(w, "sgd_momentum", lambda p: SGD(p, lr=0.1, momentum=0.9))
    run(w, "sgd_dampening", lambda p: SGD(p, lr=0.1, momentum=0.9, dampening=0.3))
    run(w, "sgd_nesterov", lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True))
    run(w, "sgd_weight_decay",
        lambda p: SGD(p, lr=0.1, momentum=0.5, weight_decay=0.1))
    run(w, "sgd_set_lr", lambda p: SGD(p, lr=0.1, momentum=0.9), lr_at=(3, 0.02))
    run(w, "sgd_clip", lambda p: SGD(p, lr=0.1, momentum=0.9), clip=0.5)
    run(w, "adam", lambda p: Adam(p, lr=0.05))
    run(w, "adam_l2", lambda p: Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6,
                                     weight_decay=0.1))
    run(w, "adamw", lambda p: AdamW(p, lr=0.05, weight_decay=0.1))
    w.save()


if __name__ == "__main__":
    main()
