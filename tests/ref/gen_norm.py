"""Reference cases for the norm family: tests/data/group_norm.txt (GroupNorm) and
tests/data/norm.txt (BatchNorm, LayerNorm). Run with /usr/bin/python3 (torch).

Every case holds the inputs, an upstream gradient dy, the output y and the gradients
(dx, dw, db where the input exists) computed in float64 from inputs that are exactly
representable in float32, so the C tests load the same values in both dtypes.

Cases with a large common offset (constant groups, mean 1e4 with std 1e-3) are
computed by PyTorch on x - shift, which is exact in float64: the norms are invariant
under the shift, and PyTorch's own float64 formulas (c2 * x + c3) would otherwise lose
up to 8 digits to cancellation. The file stores the unshifted x."""
import torch
import torch.nn.functional as F

from refio import RefWriter

gen = torch.Generator().manual_seed(20240611)


def rnd(*shape, scale=1.0, offset=0.0):
    t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + offset
    return t.float().double()  # representable in float32


def leaf(t):
    return t.clone().requires_grad_(True)


def grads(y, inputs):
    dy = rnd(*y.shape)
    need = [t for t in inputs.values() if t is not None]
    gs = torch.autograd.grad(y, need, dy)
    out, k = {}, 0
    for name, t in inputs.items():
        if t is not None:
            out["d" + name] = gs[k]
            k += 1
    return dy, out


def group_norm_case(w, name, shape, groups, weight=True, bias=True, x=None, eps=1e-5, shift=0.0):
    x = leaf(rnd(*shape)) if x is None else leaf(x)
    xs = x - shift
    c = shape[1]
    wt = leaf(rnd(c, scale=0.5, offset=1.0)) if weight else None
    bt = leaf(rnd(c)) if bias else None
    y = F.group_norm(xs, groups, wt, None if wt is None else bt, eps)
    if wt is None and bt is not None:  # torch 1.13 fails on bias without weight
        y = y + bt.view(1, c, *([1] * (len(shape) - 2)))
    dy, g = grads(y, {"x": x, "w": wt, "b": bt})
    extra = {k: v for k, v in (("w", wt), ("b", bt)) if v is not None}
    w.case(name, groups=torch.tensor([groups]), eps=torch.tensor([eps], dtype=torch.float64), x=x, **extra,
           dy=dy, y=y, **g)


def batch_norm_case(w, name, shape, training, weight=True, bias=True, running=True,
                    momentum=0.1, x=None, eps=1e-5, shift=0.0):
    x = leaf(rnd(*shape)) if x is None else leaf(x)
    c = shape[1]
    wt = leaf(rnd(c, scale=0.5, offset=1.0)) if weight else None
    bt = leaf(rnd(c)) if bias else None
    rm = rnd(c, scale=0.3) if running else None
    rv = rnd(c, scale=0.2, offset=1.0).abs() if running else None
    ins = {"rm": rm, "rv": rv} if running else {}
    rm_s = rm - shift if running else None  # updated in place by F.batch_norm
    rv_s = rv.clone() if running else None
    y = F.batch_norm(x - shift, rm_s, rv_s, wt, bt, training, momentum, eps)
    dy, g = grads(y, {"x": x, "w": wt, "b": bt})
    extra = {k: v for k, v in (("w", wt), ("b", bt)) if v is not None}
    after = {"rm_after": rm_s + shift, "rv_after": rv_s} if running else {}
    w.case(name, training=torch.tensor([int(training)]), momentum=torch.tensor([momentum], dtype=torch.float64),
           eps=torch.tensor([eps], dtype=torch.float64), x=x, **extra, **ins, dy=dy, y=y, **g, **after)


def layer_norm_case(w, name, shape, n_norm, weight=True, bias=True, x=None, eps=1e-5, shift=0.0):
    x = leaf(rnd(*shape)) if x is None else leaf(x)
    xs = x - shift
    ns = shape[len(shape) - n_norm:]
    wt = leaf(rnd(*ns, scale=0.5, offset=1.0)) if weight else None
    bt = leaf(rnd(*ns)) if bias else None
    y = F.layer_norm(xs, ns, wt, bt, eps)
    dy, g = grads(y, {"x": x, "w": wt, "b": bt})
    extra = {k: v for k, v in (("w", wt), ("b", bt)) if v is not None}
    w.case(name, normalized_shape=torch.tensor(ns), eps=torch.tensor([eps], dtype=torch.float64), x=x, **extra,
           dy=dy, y=y, **g)


gn = RefWriter("group_norm")
group_norm_case(gn, "basic", (2, 6, 4, 5), 3)
group_norm_case(gn, "n1_1x1", (1, 4, 1, 1), 2)
group_norm_case(gn, "three_d", (3, 8, 7), 4, bias=False)
group_norm_case(gn, "five_d", (2, 4, 3, 2, 3), 2)
group_norm_case(gn, "g1", (2, 5, 3, 3), 1)
group_norm_case(gn, "g_eq_c", (2, 6, 3), 6)
group_norm_case(gn, "no_affine", (2, 6, 5), 2, weight=False, bias=False)
group_norm_case(gn, "bias_only", (2, 4, 5), 2, weight=False)
group_norm_case(gn, "two_d", (3, 6), 3)
group_norm_case(gn, "tiny_groups", (4, 2, 1), 2)
group_norm_case(gn, "eps_large", (2, 4, 6), 2, eps=0.5)
group_norm_case(gn, "constant", (2, 4, 3, 3), 2, x=torch.full((2, 4, 3, 3), 3.5,
                                                              dtype=torch.float64),
                shift=3.5)
group_norm_case(gn, "offset_1e4", (2, 4, 6, 6), 2, x=rnd(2, 4, 6, 6, scale=1e-3,
                                                         offset=1e4), shift=1e4)
skewed = rnd(2, 4, 8, 8)
skewed[:, ::2] += 6.0  # the first channel of each group: the sampled pivot is far off
group_norm_case(gn, "skewed_start", (2, 4, 8, 8), 2, x=skewed)
gn.save()

nw = RefWriter("norm")
batch_norm_case(nw, "bn_train", (4, 3, 5), True)
batch_norm_case(nw, "bn_train_4d", (3, 4, 2, 3), True, momentum=0.3)
batch_norm_case(nw, "bn_train_2d_plain", (5, 2), True, weight=False, bias=False,
                running=False)
batch_norm_case(nw, "bn_train_5d", (2, 3, 2, 2, 2), True, bias=False)
batch_norm_case(nw, "bn_eval", (3, 4, 2, 2), False)
batch_norm_case(nw, "bn_eval_plain", (2, 3, 4), False, weight=False, bias=False)
batch_norm_case(nw, "bn_offset_1e4", (8, 2, 16), True, x=rnd(8, 2, 16, scale=1e-3,
                                                             offset=1e4), shift=1e4)
bn_skewed = rnd(4, 2, 70)
bn_skewed[0] += 5.0  # the first batch element: the sampled pivot is far off
batch_norm_case(nw, "bn_skewed_start", (4, 2, 70), True, x=bn_skewed)
layer_norm_case(nw, "ln_last", (2, 3, 4), 1)
layer_norm_case(nw, "ln_two", (2, 3, 4), 2, weight=False, bias=False)
layer_norm_case(nw, "ln_1d", (5,), 1, bias=False)
layer_norm_case(nw, "ln_bias_only", (2, 2, 3, 2), 2, weight=False)
layer_norm_case(nw, "ln_all", (2, 3, 4), 3)
layer_norm_case(nw, "ln_offset_1e4", (3, 40), 1, x=rnd(3, 40, scale=1e-3, offset=1e4),
                shift=1e4)
layer_norm_case(nw, "ln_constant", (2, 6), 1, x=torch.full((2, 6), -2.25,
                                                           dtype=torch.float64),
                shift=-2.25)
nw.save()
