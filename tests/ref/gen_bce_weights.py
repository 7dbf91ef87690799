"""PyTorch references for tg_binary_cross_entropy_with_logits_ex with weight and
pos_weight: tests/data/bce_weights.txt. Each case holds the logits x, targets t (in
[0, 1]), weight w and/or pos_weight pw (absent: None), `params` (i64: reduction 0 none,
1 mean, 2 sum), the loss y, an upstream gradient gy and the gradients dx, dt
of F.binary_cross_entropy_with_logits, all in float64 from float32-exact inputs.
Run with /tmp/torch2/bin/python tests/ref/gen_bce_weights.py (README)."""
import torch
import torch.nn.functional as F

from refio import RefWriter

gen = torch.Generator().manual_seed(20261203)
out = RefWriter("bce_weights")
RED = ["none", "mean", "sum"]


def f32(t):
    return t.float().double().requires_grad_(True)


def case(name, red, x_shape, w_shape=None, pw_shape=None, scale=3.0):
    x = f32(torch.randn(x_shape, generator=gen, dtype=torch.float64) * scale)
    t = f32(torch.rand(x_shape, generator=gen, dtype=torch.float64))
    # PyTorch takes no gradient for weight and pos_weight (it refuses them requiring
    # one); tapegrad's are gradchecked only.
    w = f32(torch.rand(w_shape, generator=gen, dtype=torch.float64) + 0.5).detach() \
        if w_shape else None
    pw = f32(torch.rand(pw_shape, generator=gen, dtype=torch.float64) * 3 + 0.25) \
        .detach() if pw_shape else None
    y = F.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw,
                                           reduction=RED[red])
    gy = f32(torch.randn(y.shape, generator=gen, dtype=torch.float64)).detach()
    dx, dt = torch.autograd.grad(y, [x, t], gy)
    tensors = dict(params=torch.tensor([red]), x=x, t=t)
    if w is not None:
        tensors["w"] = w
    if pw is not None:
        tensors["pw"] = pw
    out.case(name, **tensors, y=y, gy=gy, dx=dx, dt=dt)


for red in range(3):
    # broadcast weight [N, 1] (per sample) and pos_weight [C] (per class)
    case(f"nc_w_n1_pw_c_{RED[red]}", red, (5, 3), (5, 1), (3,))
    # [N, C, H, W]: weight per channel, pos_weight [C, 1, 1]
    case(f"nchw_w_c_pw_c11_{RED[red]}", red, (2, 3, 2, 2), (1, 3, 1, 1), (3, 1, 1))
case("nc_weight_only_mean", 1, (4, 3), (4, 1))
case("nc_pos_weight_only_sum", 2, (4, 3), None, (3,))
case("nc_full_weight_none", 0, (3, 4), (3, 4), (4,), scale=20.0)  # saturated logits
out.save()
