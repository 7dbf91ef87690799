"""Reference forwards of torch.nn modules for tests/test_nn.c.

Each case holds a module's parameters (as in its state_dict), the input `x` and the
output `out`; BatchNorm2d also holds the running stats after one training forward
and the output of an eval forward on `x2`. Run: /usr/bin/python3 gen_nn.py
"""
import torch
import torch.nn as nn
from refio import RefWriter

torch.manual_seed(20261202)
torch.set_default_dtype(torch.float64)


def randomize(m):
    """Non-trivial affine parameters for norm layers (PyTorch starts them at 1, 0)."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name in ("weight", "bias") and p.dim() >= 1 and not isinstance(
                    m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name == "weight" else 0.0))
    return m


def case(w, name, m, x, train=False):
    m.train(train)
    out = m(x)
    tensors = {k: v for k, v in m.state_dict().items() if v.is_floating_point()}
    tensors.update(x=x, out=out)
    w.case(name, **tensors)


def main():
    w = RefWriter("nn")
    case(w, "linear", nn.Linear(5, 3), torch.randn(4, 5))
    case(w, "linear_batched", nn.Linear(5, 3), torch.randn(2, 3, 5))
    case(w, "linear_nobias", nn.Linear(5, 3, bias=False), torch.randn(4, 5))
    case(w, "conv2d", nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.randn(2, 3, 7, 6))
    case(w, "conv2d_groups",
         nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, bias=False),
         torch.randn(2, 4, 6, 5))
    case(w, "conv_transpose2d",
         nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
         torch.randn(2, 4, 5, 5))
    case(w, "group_norm", randomize(nn.GroupNorm(2, 6)), torch.randn(3, 6, 4, 5))
    case(w, "group_norm_noaffine", nn.GroupNorm(3, 6, affine=False),
         torch.randn(2, 6, 7))
    case(w, "layer_norm", randomize(nn.LayerNorm([4, 5])), torch.randn(3, 4, 5))

    bn = randomize(nn.BatchNorm2d(3, momentum=0.2))
    x, x2 = torch.randn(4, 3, 5, 5) * 2 + 1, torch.randn(2, 3, 5, 5)
    out_train = bn.train()(x)
    out_eval = bn.eval()(x2)
    w.case("batch_norm2d", weight=bn.weight, bias=bn.bias, x=x, out=out_train,
           running_mean=bn.running_mean, running_var=bn.running_var, x2=x2,
           out_eval=out_eval)

    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 6)
    w.case("mlp", **{"l1.weight": mlp[0].weight, "l1.bias": mlp[0].bias,
                     "l2.weight": mlp[2].weight, "l2.bias": mlp[2].bias},
           x=x, out=mlp(x))
    w.save()


if __name__ == "__main__":
    main()
