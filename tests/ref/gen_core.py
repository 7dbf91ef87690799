"""Reference values for the core ops (elementwise, reduce, shape) from PyTorch.

Each case holds the inputs, a random upstream gradient `gout`, the output `out` and
the input gradients `g0`, `g1` of sum(out * gout). Run: /usr/bin/python3 gen_core.py
"""
import torch
import torch.nn.functional as F
from refio import RefWriter, leaf

g = torch.Generator().manual_seed(20261125)


def record(w, name, fn, *inputs):
    out = fn(*inputs)
    gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * gout).sum(), inputs, allow_unused=True)
    tensors = {f"in{i}": x for i, x in enumerate(inputs)}
    tensors.update(out=out, gout=gout)
    for i, gr in enumerate(grads):
        tensors[f"g{i}"] = gr if gr is not None else torch.zeros_like(inputs[i])
    w.case(name, **tensors)


def elementwise():
    w = RefWriter("elementwise")
    pairs = [((3, 4), (3, 4)), ((3, 1), (1, 4)), ((2, 3, 4), (4,)), ((1,), (5, 1)),
             ((2, 1, 3), (4, 1)), ((), (2, 3))]
    ops = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}
    for op, fn in ops.items():
        for k, (sa, sb) in enumerate(pairs):
            a = leaf(*sa, gen=g)
            b = leaf(*sb, gen=g)
            if op == "div":
                b = (b.detach().abs() + 0.5).requires_grad_(True)
            record(w, f"{op}#{k}", fn, a, b)
    unary = {
        "neg": (torch.neg, 0), "exp": (torch.exp, 0), "log": (torch.log, 1),
        "sqrt": (torch.sqrt, 1), "abs": (torch.abs, 0), "relu": (torch.relu, 0),
        "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), 0),
        "sigmoid": (torch.sigmoid, 0), "tanh": (torch.tanh, 0), "gelu": (F.gelu, 0),
        "add_scalar": (lambda x: x + 1.5, 0), "sub_scalar": (lambda x: x - 1.5, 0),
        "mul_scalar": (lambda x: x * -2.5, 0), "div_scalar": (lambda x: x / 4.0, 0),
        "pow": (lambda x: x ** 3.0, 0), "pow_frac": (lambda x: x ** 0.5, 1),
    }
    for op, (fn, positive) in unary.items():
        for k, shape in enumerate([(7,), (2, 3, 5), ()]):
            x = leaf(*shape, gen=g)
            if positive:
                x = (x.detach().abs() + 0.1).requires_grad_(True)
            record(w, f"{op}#{k}", fn, x)
    w.save()


def reduce():
    w = RefWriter("reduce")
    x = leaf(3, 4, 5, gen=g)
    record(w, "sum", lambda t: t.sum(), x)
    record(w, "mean", lambda t: t.mean(), x)
    for k, (dims, keep) in enumerate([((0,), False), ((1,), True), ((2,), False),
                                      ((0, 2), True), ((-1, 0), False), ((0, 1, 2), True)]):
        record(w, f"sum_dims#{k}", lambda t: t.sum(dim=dims, keepdim=keep), x)
        w.case(f"sum_dims_args#{k}", dims=torch.tensor(dims), keep=torch.tensor(int(keep)))
        record(w, f"mean_dims#{k}", lambda t: t.mean(dim=dims, keepdim=keep), x)
    for k, (dim, keep) in enumerate([(0, False), (1, True), (-1, False)]):
        record(w, f"max_dim#{k}", lambda t: t.max(dim=dim, keepdim=keep).values, x)
        w.case(f"max_dim_args#{k}", dim=torch.tensor(dim), keep=torch.tensor(int(keep)),
               idx=x.max(dim=dim, keepdim=keep).indices)
    w.save()


def shape():
    w = RefWriter("shape")
    x = leaf(2, 3, 4, gen=g)
    record(w, "permute", lambda t: t.permute(2, 0, 1), x)
    record(w, "transpose", lambda t: t.transpose(0, 2), x)
    record(w, "narrow", lambda t: t.narrow(1, 1, 2), x)
    record(w, "reshape", lambda t: t.reshape(4, -1), x)
    record(w, "flatten", lambda t: t.flatten(1), x)
    y = leaf(2, 2, 4, gen=g)
    record(w, "cat", lambda a, b: torch.cat([a, b], dim=1), x, y)
    w.save()


if __name__ == "__main__":
    elementwise()
    reduce()
    shape()
