"""torch.optim.SGD and AdamW with parameter groups, for tests/test_optim_state.c.

The regression problem, starting point and step count of gen_optim.py. Parameters w
[1, 4] and b [1] sit in groups of their own with their own lr / momentum (betas[0]) /
weight decay; u (never any gradient) in a third group with the defaults. Before step
3 the lr of b's group changes (a per-group set_lr). Records w1..w5, b1..b5.
Run: /tmp/torch2/bin/python gen_optim_groups.py
"""
import torch
from gen_optim import STEPS, b0, u0, w0, x, y
from refio import RefWriter


def run(w, name, make_opt):
    wp, bp, up = (t.clone().requires_grad_(True) for t in (w0, b0, u0))
    opt = make_opt(wp, bp, up)
    out = dict(x=x, y=y, w0=w0, b0=b0, u0=u0)
    for k in range(1, STEPS + 1):
        if k == 3:
            opt.param_groups[1]["lr"] = 0.03
        opt.zero_grad(set_to_none=True)
        loss = (((x * wp).sum(1) + bp - y) ** 2).mean()
        loss.backward()
        opt.step()
        out[f"w{k}"] = wp.detach().clone()
        out[f"b{k}"] = bp.detach().clone()
    assert torch.equal(up.detach(), u0)
    w.case(name, **out)


def main():
    w = RefWriter("optim_groups")
    run(w, "sgd", lambda wp, bp, up: torch.optim.SGD(
        [{"params": [wp], "weight_decay": 0.1},
         {"params": [bp], "lr": 0.02, "momentum": 0.5},
         {"params": [up]}], lr=0.1, momentum=0.9))
    run(w, "adamw", lambda wp, bp, up: torch.optim.AdamW(
        [{"params": [wp], "lr": 0.02},
         {"params": [bp], "weight_decay": 0.0, "betas": (0.8, 0.999)},
         {"params": [up]}], lr=0.05, weight_decay=0.1))
    w.save()


if __name__ == "__main__":
    main()
