"""Learning rates of torch.optim.lr_scheduler over 100 steps, for tests/test_sched.c.

Each case builds SGD (momentum 0.9) or Adam over two parameter groups of lr 0.1 and
0.05, makes the scheduler, and records every group's lr (and, for OneCycleLR, its
momentum / beta1) after construction and after each of 100 steps: lr0, lr1, mom0
[101]. ReduceLROnPlateau cases step on the recorded `metric` [100].
Run: /tmp/torch2/bin/python gen_sched.py
"""

import torch
from torch.optim import lr_scheduler as S
from refio import RefWriter


STEPS = 100


def optimizer(adam=False):
    p0, p1 = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    groups = [{"params": [p0], "lr": 0.1}, {"params": [p1], "lr": 0.05}]
    if adam:
        return torch.optim.Adam(groups, betas=(0.9, 0.999))
    return torch.optim.SGD(groups, momentum=0.9)


def momentum(opt):
    g = opt.param_groups[0]
    return g["betas"][0] if "betas" in g else g["momentum"]


def run(w, name, make, adam=False, metric=None):
    opt = optimizer(adam)
    sched = make(opt)
    lr0, lr1, mom0 = [], [], []

    def record():
        lr0.append(opt.param_groups[0]["lr"])
        lr1.append(opt.param_groups[1]["lr"])
        mom0.append(momentum(opt))

    record()
    for k in range(STEPS):
        opt.step()
        if metric is None:
            sched.step()
        else:
            sched.step(metric[k])
        record()
    out = dict(lr0=torch.tensor(lr0, dtype=torch.float64),
               lr1=torch.tensor(lr1, dtype=torch.float64),
               mom0=torch.tensor(mom0, dtype=torch.float64))
    if metric is not None:
        out["metric"] = torch.tensor(metric, dtype=torch.float64)
    w.case(name, **out)


def main():
    w = RefWriter("sched")
    run(w, "step", lambda o: S.StepLR(o, step_size=7, gamma=0.5))
    run(w, "multistep", lambda o: S.MultiStepLR(o, milestones=[10, 30, 30, 60], gamma=0.3))
    run(w, "linear", lambda o: S.LinearLR(o, start_factor=0.25, end_factor=0.9,
                                          total_iters=20))
    run(w, "cosine", lambda o: S.CosineAnnealingLR(o, T_max=40, eta_min=0.001))
    run(w, "warmup_cosine", lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=10),
            S.CosineAnnealingLR(o, T_max=90, eta_min=0.0)], milestones=[10]))
    run(w, "warmup_step_cosine", lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.5, end_factor=1.0, total_iters=5),
            S.StepLR(o, step_size=10, gamma=0.5),
            S.CosineAnnealingLR(o, T_max=50, eta_min=0.002)], milestones=[5, 40]))
    run(w, "onecycle", lambda o: S.OneCycleLR(o, max_lr=0.5, total_steps=STEPS))
    run(w, "onecycle_linear_3phase", lambda o: S.OneCycleLR(
        o, max_lr=0.02, total_steps=STEPS + 10, pct_start=0.25, anneal_strategy="linear",
        three_phase=True, base_momentum=0.8, max_momentum=0.9, div_factor=10.0,
        final_div_factor=100.0), adam=True)
    g = torch.Generator().manual_seed(20261216)
    noise = torch.rand(STEPS, generator=g, dtype=torch.float64).tolist()
    metric = [1.0 / (1 + 0.2 * k) + (0.05 if k > 30 else 0.002) * n
              for k, n in enumerate(noise)]
    run(w, "plateau_min_rel", lambda o: S.ReduceLROnPlateau(
        o, factor=0.5, patience=3, cooldown=2, min_lr=0.004), metric=metric)
    run(w, "plateau_max_abs", lambda o: S.ReduceLROnPlateau(
        o, mode="max", factor=0.7, patience=2, threshold=0.01, threshold_mode="abs",
        min_lr=0.01), metric=[-m for m in metric])
    w.save()


if __name__ == "__main__":
    main()
