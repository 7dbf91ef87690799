"""PyTorch's own OpInfo samples for the ops tapegrad has, replayed by
tests/test_opinfo.c: tests/data/opinfo_<family>.txt.

For every OpInfo of op_db (PyTorch 2.x) that maps onto a tapegrad function, this
walks reference_inputs where the OpInfo has them, else sample_inputs (float32), and
error_inputs. Each sample becomes one case (format of refio.py, plus `f32` tensors
whose values are float32-exact and `note` lines):
    note opinfo NAME          the OpInfo (name.variant), the row of the report
    note op KEY               the tapegrad call the C side makes (its runner)
    tensor xK                 the call's tensor arguments in order (absent: NULL)
    tensor p_NAME / note s_NAME   integer, float and string arguments
    tensor out, out1          outputs (float64 reference; out1 int64 indices)
    tensor dy, gK             upstream gradient of out and the input gradients
    tensor e_out, e_gK        PyTorch's own float32 error: max |f32 - f64| result
or, instead of op/outputs, `note skip REASON` (not expressible in tapegrad),
`note trimmed N` (more than LIMIT elements), and for error inputs `note error REGEX`.
References are computed in float64 from the float32 sample (upcast, so the float64
replay sees the same values); float32 results give the error PyTorch itself makes.
Non-contiguous samples are written contiguous: tapegrad tensors are contiguous.
Every OpInfo draws from generators seeded by its name, so a file depends only on its
own OpInfos and a second run writes the same bytes.
Run: /tmp/torch2/bin/python tests/ref/gen_opinfo.py [family ...]"""
import math
import os
import random
import sys
import warnings
import zlib

import torch
from torch.testing._internal.common_methods_invocations import op_db

from refio import DATA

warnings.filterwarnings("ignore")
LIMIT = 1200  # elements of all input tensors of a sample together
FLOATS = (torch.float32, torch.float64)
RED = {"none": 0, "mean": 1, "sum": 2}

# Arguments tapegrad has gained; a sample needing one not listed is "not expressible".
CAPS = {"pool_ex", "unbatched_pool", "unpool", "alpha", "rounding_mode", "rscalar",
        "pow_tensor", "gelu_tanh", "prob_targets", "class_weight", "label_smoothing",
        "bce_weight", "softmax_dtype", "squeeze_dims", "cat_legacy", "cat_empty",
        "unbatched_conv", "conv_same", "bn_empty",
        "align_corners", "scale_factor", "resample_nd"}


class NE(Exception):
    """The sample is not expressible in tapegrad's API; the message says why."""


def need(cap, why):
    if cap not in CAPS:
        raise NE(why)


class Call:
    def __init__(self, key):
        self.key, self.tensors, self.p, self.s = key, [], {}, {}

    def t(self, x, kind="float", what="input"):
        if x is None:
            self.tensors.append(None)
            return self
        if not isinstance(x, torch.Tensor):
            raise NE(f"{what} is a {type(x).__name__}, not a tensor")
        if kind == "float" and x.dtype not in FLOATS:
            raise NE(f"dtype {str(x.dtype)[6:]} {what}")
        if kind == "index" and x.dtype != torch.int64 and x.dtype not in FLOATS:
            raise NE(f"dtype {str(x.dtype)[6:]} {what}")
        if x.dim() > 8:
            raise NE(f"{x.dim()}-dim {what} (tapegrad has at most 8 dims)")
        self.tensors.append(x)
        return self


def scalar(v, what):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise NE(f"{type(v).__name__} {what}")
    return float(v)


def pair(v, what, n=2):
    if isinstance(v, int) and not isinstance(v, bool):
        return [v] * n
    if isinstance(v, (tuple, list)) and len(v) == 1 and isinstance(v[0], int):
        return [v[0]] * n
    if isinstance(v, (tuple, list)) and len(v) == n and all(isinstance(e, int) for e in v):
        return list(v)
    raise NE(f"{what} {v!r}")


def dims_of(v):
    if v is None:
        return None
    if isinstance(v, int):
        return [v]
    return list(v)


def kw(s, *allowed):
    extra = [k for k in s.kwargs if k not in allowed]
    if extra:
        raise NE("unsupported kwarg " + ", ".join(sorted(extra)))
    return s.kwargs


def named(s, *names, skip=0):
    """The sample's arguments by name: the positional ones after the first skip in
    the order of names, then the keywords (any other keyword: not expressible)."""
    vals = dict(kw(s, *names))
    if len(s.args) - skip > len(names):
        raise NE("extra arguments")
    vals.update(zip(names, s.args[skip:]))
    return vals


def keepdim(c, v):
    c.p["keepdim"] = int(bool(v.get("keepdim", False)))
    return c


def same_float_dtype(tensors):
    dts = {t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.dtype in FLOATS}
    if len(dts) > 1:
        raise NE("mixed float32/float64 operands")


# ---------------------------------------------------------------- mappings --
# Each takes a SampleInput and returns the Call tapegrad makes, or raises NE.


def m_unary(key):
    def f(s):
        kw(s)
        if s.args:
            raise NE("extra arguments")
        return Call(key).t(s.input)
    return f


def m_clone(s):
    k = kw(s, "memory_format")
    if k.get("memory_format", torch.preserve_format) not in (torch.preserve_format,
                                                            torch.contiguous_format):
        raise NE("memory_format channels_last (tapegrad tensors are contiguous)")
    return Call("clone").t(s.input)


def m_binary(name):
    """add/sub/mul/div/rsub with a tensor or a Python scalar on either side."""
    def f(s):
        k = kw(s, "alpha", "rounding_mode")
        other = s.args[0]
        alpha = k.get("alpha", 1)
        rounding = k.get("rounding_mode")
        if alpha != 1:
            need("alpha", "kwarg alpha")
        if rounding is not None:
            need("rounding_mode", f"rounding_mode {rounding}")
        t_in, t_other = isinstance(s.input, torch.Tensor), isinstance(other, torch.Tensor)
        ex = "_ex" if alpha != 1 or rounding is not None else ""
        if t_in and t_other:
            same_float_dtype([s.input, other])
            c = Call(name + ex if name != "rsub" else "rsub").t(s.input).t(other, what="other")
        elif t_in:
            if name == "rsub":
                need("rscalar", "scalar - tensor")
                c = Call("rsub_scalar").t(s.input)
            elif ex and name in ("add", "sub"):
                raise NE("alpha with a scalar")
            else:
                c = Call(name + ex + "_scalar").t(s.input)
            c.p["s"] = scalar(other, "scalar")
        elif t_other:
            # scalar (op) tensor: the commutative ops swap, the others reverse.
            if name in ("add", "mul") and alpha == 1:
                c = Call(name + "_scalar").t(other, what="other")
            elif name in ("sub", "div") and alpha == 1:
                need("rscalar", "scalar - tensor" if name == "sub" else "scalar / tensor")
                c = Call("r" + name + ex + "_scalar").t(other, what="other")
            else:
                raise NE("scalar input")
            c.p["s"] = scalar(s.input, "scalar")
        else:
            raise NE("no tensor operand")
        if name in ("add", "sub", "rsub"):
            c.p["alpha"] = scalar(alpha, "alpha")
        if rounding is not None:
            c.s["rounding"] = rounding
        return c
    return f


def m_pow(s):
    kw(s)
    e = s.args[0]
    if not isinstance(s.input, torch.Tensor) and isinstance(e, torch.Tensor):
        need("rscalar", "scalar base")
        c = Call("rpow_scalar").t(e, what="exponent")
        c.p["s"] = scalar(s.input, "base")
        return c
    if isinstance(e, torch.Tensor):
        need("pow_tensor", "tensor exponent")
        same_float_dtype([s.input, e])
        return Call("pow").t(s.input).t(e, what="exponent")
    c = Call("pow_scalar").t(s.input)
    c.p["s"] = scalar(e, "exponent")
    return c


def m_leaky(s):
    k = kw(s, "negative_slope", "inplace")
    if k.get("inplace"):
        raise NE("inplace")
    c = Call("leaky_relu").t(s.input)
    slope = s.args[0] if s.args else k.get("negative_slope", 0.01)
    c.p["slope"] = scalar(slope, "negative_slope")
    return c


def m_gelu(s):
    k = kw(s, "approximate")
    a = k.get("approximate", "none")
    if a != "none":
        need("gelu_tanh", f"approximate={a}")
    c = Call("gelu_ex").t(s.input)
    c.s["approximate"] = a
    return c


def m_sum_mean(key):
    def f(s):
        v = named(s, "dim", "keepdim", "dtype")
        if v.get("dtype") is not None:
            raise NE("kwarg dtype")
        dim = dims_of(v.get("dim"))
        if dim is None:
            if v.get("keepdim"):
                raise NE("keepdim over all dims")
            return Call(key).t(s.input)
        c = Call(key + "_dims").t(s.input)
        c.p["dims"] = dim
        return keepdim(c, v)
    return f


def m_minmax(key):
    """max/min with dim (values and indices) or over all elements."""
    def f(s):
        v = named(s, "dim", "keepdim")
        if v.get("dim") is None:
            return Call(key + "_all").t(s.input)
        c = Call(key + "_dim").t(s.input)
        c.p["dim"] = v["dim"]
        return keepdim(c, v)
    return f


def m_amax(key):
    def f(s):
        v = named(s, "dim", "keepdim")
        dim = dims_of(v.get("dim", ()))
        if len(dim) == 1:
            c = Call(key[1:] + "_dim").t(s.input)
            c.p["dim"] = dim[0]
            c.s["values_only"] = "1"
        else:
            c = Call(key + "_dims").t(s.input)
            c.p["dims"] = dim
        return keepdim(c, v)
    return f


def m_arg(key):
    def f(s):
        v = named(s, "dim", "keepdim")
        c = Call(key).t(s.input)
        if v.get("dim") is not None:
            c.p["dim"] = v["dim"]
        return keepdim(c, v)
    return f


def m_matmul(s):
    kw(s)
    same_float_dtype([s.input, s.args[0]])
    return Call("matmul").t(s.input).t(s.args[0], what="other")


def m_linear(s):
    vals = named(s, "weight", "bias")
    w, b = vals["weight"], vals.get("bias")
    same_float_dtype([s.input, w, b])
    return Call("linear").t(s.input).t(w, what="weight").t(b, what="bias")


def m_softmax(key):
    def f(s):
        k = kw(s, "dim", "dtype")
        dim = s.args[0] if s.args else k.get("dim")
        dt = k.get("dtype")
        c = Call(key).t(s.input)
        c.p["dim"] = dim
        if dt is not None:
            need("softmax_dtype", "output dtype")
            if dt not in FLOATS:
                raise NE(f"output dtype {dt}")
            c.s["dtype"] = "f64" if dt == torch.float64 else "f32"
        return c
    return f


def m_class_loss(key):
    def f(s):
        k = kw(s, "weight", "reduction", "ignore_index", "label_smoothing", "size_average",
               "reduce")
        if "size_average" in k or "reduce" in k:
            raise NE("legacy size_average/reduce")
        tgt = s.args[0]
        w = k.get("weight")
        ls = k.get("label_smoothing", 0.0)
        c = Call(key).t(s.input)
        if isinstance(tgt, torch.Tensor) and tgt.dtype in FLOATS:
            need("prob_targets", "class-probability targets")
            c.t(tgt, what="target")
        else:
            c.t(tgt, kind="index", what="target")
        if w is not None:
            need("class_weight", "kwarg weight")
        c.t(w, what="weight")
        if ls:
            need("label_smoothing", "kwarg label_smoothing")
        c.p["reduction"] = RED[k.get("reduction", "mean")]
        c.p["ignore"] = k.get("ignore_index", -100)
        c.p["smoothing"] = float(ls)
        same_float_dtype([s.input, tgt, w])
        return c
    return f


def m_mse(s):
    k = kw(s, "reduction")
    same_float_dtype([s.input, s.args[0]])
    if s.input.shape != s.args[0].shape:
        raise NE("broadcast target")
    c = Call("mse_loss").t(s.input).t(s.args[0], what="target")
    c.p["reduction"] = RED[k.get("reduction", "mean")]
    return c


def m_bce(s):
    k = kw(s, "weight", "pos_weight", "reduction")
    t = s.args[0]
    w, pw = k.get("weight"), k.get("pos_weight")
    if w is not None:
        need("bce_weight", "kwarg weight")
    if pw is not None:
        need("bce_weight", "kwarg pos_weight")
    same_float_dtype([s.input, t, w, pw])
    c = Call("bce_with_logits").t(s.input).t(t, what="target").t(w, what="weight")
    c.t(pw, what="pos_weight")
    c.p["reduction"] = RED[k.get("reduction", "mean")]
    return c


def check_eps(eps):
    if not math.isfinite(eps):
        raise NE(f"eps {eps} (tapegrad takes any finite eps)")
    return float(eps)


def m_group_norm(s):
    k = kw(s, "weight", "bias", "eps")
    c = Call("group_norm").t(s.input).t(k.get("weight"), what="weight")
    c.t(k.get("bias"), what="bias")
    c.p["groups"] = s.args[0]
    c.p["eps"] = check_eps(k.get("eps", 1e-5))
    same_float_dtype([s.input, k.get("weight"), k.get("bias")])
    return c


def m_batch_norm(s):
    k = kw(s, "training", "momentum", "eps")
    rm, rv, w, b = (list(s.args) + [None] * 4)[:4]
    training = k.get("training", False)
    c = Call("batch_norm").t(s.input).t(w, what="weight").t(b, what="bias")
    c.t(rm, what="running_mean").t(rv, what="running_var")
    c.p["training"] = int(bool(training))
    c.p["momentum"] = float(k.get("momentum", 0.1))
    c.p["eps"] = check_eps(k.get("eps", 1e-5))
    if s.input.numel() == 0:
        need("bn_empty", "empty input")
    same_float_dtype([s.input, w, b, rm, rv])
    return c


def m_layer_norm(s):
    k = kw(s, "weight", "bias", "eps")
    args = list(s.args)
    shape = args[0]
    w = args[1] if len(args) > 1 else k.get("weight")
    b = args[2] if len(args) > 2 else k.get("bias")
    c = Call("layer_norm").t(s.input).t(w, what="weight").t(b, what="bias")
    c.p["shape"] = list(shape)
    c.p["eps"] = check_eps(args[3] if len(args) > 3 else k.get("eps", 1e-5))
    same_float_dtype([s.input, w, b])
    return c


def unbatched(x, what):
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        need("unbatched_conv" if "conv" in what else "unbatched_pool",
             f"unbatched [C,H,W] input to {what}")


def m_conv(key):
    def f(s):
        names = ["stride", "padding"] + (["output_padding"] if key != "conv2d" else [])
        names += ["groups", "dilation"] if key != "conv2d" else ["dilation", "groups"]
        vals = named(s, "weight", "bias", *names)
        w, b = vals["weight"], vals.get("bias")
        unbatched(s.input, key)
        c = Call(key).t(s.input).t(w, what="weight").t(b, what="bias")
        for n in names:
            if n == "groups":
                c.p[n] = vals.get(n, 1)
            elif n == "padding" and isinstance(vals.get(n), str):
                need("conv_same", f"padding='{vals[n]}'")
                c.s[n] = vals[n]
            else:
                c.p[n] = pair(vals.get(n, 0 if "padding" in n else 1), n)
        same_float_dtype([s.input, w, b])
        return c
    return f


def window(c, vals):
    """A pool's kernel, stride (None or empty: the kernel) and padding."""
    c.p["kernel"] = pair(vals["kernel_size"], "kernel_size")
    st = vals.get("stride")
    c.p["stride"] = pair(st, "stride") if st not in (None, [], ()) else c.p["kernel"]
    c.p["padding"] = pair(vals.get("padding", 0), "padding")
    return c


def m_max_pool(s):
    vals = named(s, "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                 "return_indices")
    unbatched(s.input, "max_pool2d")
    c = window(Call("max_pool2d").t(s.input), vals)
    c.p["dilation"] = pair(vals.get("dilation", 1), "dilation")
    if c.p["dilation"] != [1, 1]:
        need("pool_ex", "dilation")
    c.p["ceil"] = int(bool(vals.get("ceil_mode", False)))
    if c.p["ceil"]:
        need("pool_ex", "ceil_mode")
    c.p["indices"] = int(bool(vals.get("return_indices", False)))
    if c.p["indices"]:
        need("pool_ex", "return_indices")
    return c


def m_avg_pool(s):
    vals = named(s, "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                 "divisor_override")
    unbatched(s.input, "avg_pool2d")
    c = window(Call("avg_pool2d").t(s.input), vals)
    c.p["ceil"] = int(bool(vals.get("ceil_mode", False)))
    c.p["include_pad"] = int(bool(vals.get("count_include_pad", True)))
    d = vals.get("divisor_override")
    c.p["divisor"] = 0 if d is None else d
    if c.p["ceil"]:
        need("pool_ex", "ceil_mode")
    if not c.p["include_pad"]:
        need("pool_ex", "count_include_pad=False")
    if d is not None:
        need("pool_ex", "divisor_override")
    if d == 0:
        raise NE("divisor_override=0 (tapegrad's 0 stands for None)")
    return c


def m_adaptive(s):
    k = kw(s, "output_size")
    size = s.args[0] if s.args else k.get("output_size")
    unbatched(s.input, "adaptive_avg_pool2d")
    x = s.input
    if isinstance(size, int):
        size = [size, size]
    size = list(size)
    if len(size) == 2 and x.dim() >= 2:
        # None keeps the input's size: the caller passes that size.
        size = [x.shape[-2 + i] if v is None else v for i, v in enumerate(size)]
    if any(v is None for v in size):
        raise NE("output_size None")
    c = Call("adaptive_avg_pool2d").t(x)
    c.p["size"] = size
    return c


def m_interp(mode, upsample=False):
    def f(s):
        k = kw(s, "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor",
               "antialias")
        size = s.args[0] if s.args else k.get("size")
        md = k.get("mode", mode)
        if upsample and md == "bilinear":
            k = dict(k, align_corners=True)  # upsample_bilinear's, unlike interpolate's
        if md not in ("nearest", "linear", "bilinear", "trilinear"):
            raise NE(f"mode {md}")
        nsp = s.input.dim() - 2  # spatial dims
        if not 1 <= nsp <= 3:
            raise NE(f"{s.input.dim()}-D input (tapegrad resamples 3-D to 5-D)")
        if nsp != 2:
            need("resample_nd", f"{s.input.dim()}-D input")
        if k.get("antialias"):
            raise NE("antialias")
        c = Call("upsample_" + md).t(s.input)
        ac = k.get("align_corners")
        if ac:
            need("align_corners", "align_corners=True")
        c.p["align_corners"] = int(bool(ac))
        sf = k.get("scale_factor")
        if size is not None:
            c.p["size"] = pair(size, "size", nsp)
        else:
            need("scale_factor", "scale_factor")
            sf = [float(sf)] * nsp if not isinstance(sf, (tuple, list)) else list(sf)
            c.p["scale"] = [float(v) for v in sf]
            c.p["recompute"] = int(bool(k.get("recompute_scale_factor")))
        return c
    return f


def m_unpool(s):
    vals = named(s, "kernel_size", "stride", "padding", "output_size", skip=1)
    need("unpool", "max_unpool2d")
    unbatched(s.input, "max_unpool2d")
    c = Call("max_unpool2d").t(s.input).t(s.args[0], kind="index", what="indices")
    window(c, vals)
    os_ = vals.get("output_size")
    if os_ is not None:
        c.p["output_size"] = list(os_)[-2:]
    return c


def m_shape(key):
    def f(s):
        kw(s, *({"flatten": ["start_dim", "end_dim"]}.get(key, [])))
        c = Call(key).t(s.input)
        a = list(s.args)
        if key in ("reshape", "view"):
            c.p["shape"] = list(a[0]) if isinstance(a[0], (tuple, list)) else a
        elif key == "flatten":
            c.p["start"] = a[0] if a else s.kwargs.get("start_dim", 0)
            c.p["end"] = a[1] if len(a) > 1 else s.kwargs.get("end_dim", -1)
        elif key == "unsqueeze":
            c.p["dim"] = a[0]
        elif key == "permute":
            c.p["dims"] = list(a[0]) if isinstance(a[0], (tuple, list)) else a
        elif key == "transpose":
            c.p["d0"], c.p["d1"] = a
        return c
    return f


def m_squeeze(s):
    kw(s, "dim")
    dim = s.args[0] if s.args else s.kwargs.get("dim")
    if dim is None:
        return Call("squeeze_all").t(s.input)
    if isinstance(dim, (tuple, list)):
        need("squeeze_dims", "several dims")
        c = Call("squeeze_dims").t(s.input)
        c.p["dims"] = list(dim)
        return c
    c = Call("squeeze").t(s.input)
    c.p["dim"] = dim
    return c


def m_narrow(s):
    kw(s)
    dim, start, length = s.args
    if isinstance(start, torch.Tensor):
        if start.dim() != 0 or start.dtype not in (torch.int64, torch.int32):
            raise NE("start a non-0-dim or non-integral tensor")
        start = int(start)
    c = Call("narrow").t(s.input)
    c.p["dim"], c.p["start"], c.p["length"] = dim, start, length
    return c


def m_cat(s):
    k = kw(s, "dim")
    ts = s.input
    if not isinstance(ts, (list, tuple)):
        raise NE("input is not a sequence of tensors")
    dim = s.args[0] if s.args else k.get("dim", 0)
    if any(not isinstance(t, torch.Tensor) for t in ts):
        raise NE("None in the tensor list")
    same_float_dtype(ts)
    c = Call("cat")
    for t in ts:
        c.t(t)
    if any(t.dim() == 1 and t.shape[0] == 0 for t in ts) and \
            len({t.dim() for t in ts}) > 1:
        need("cat_legacy", "legacy skipping of 1-D empty tensors")
    if any(t.numel() == 0 for t in ts):
        need("cat_empty", "empty tensors")
    c.p["dim"] = dim
    return c


OPS = {
    "abs": m_unary("abs"), "neg": m_unary("neg"), "exp": m_unary("exp"),
    "log": m_unary("log"), "sqrt": m_unary("sqrt"), "sigmoid": m_unary("sigmoid"),
    "tanh": m_unary("tanh"), "nn.functional.relu": m_unary("relu"), "clone": m_clone,
    "nn.functional.leaky_relu": m_leaky, "nn.functional.gelu": m_gelu,
    "add": m_binary("add"), "sub": m_binary("sub"), "mul": m_binary("mul"),
    "div.no_rounding_mode": m_binary("div"), "div.trunc_rounding": m_binary("div"),
    "div.floor_rounding": m_binary("div"), "true_divide": m_binary("div"), "rsub": m_binary("rsub"),
    "pow": m_pow,
    "sum": m_sum_mean("sum"), "mean": m_sum_mean("mean"),
    "max.reduction_with_dim": m_minmax("max"), "max.reduction_no_dim": m_minmax("max"),
    "min.reduction_with_dim": m_minmax("min"), "min.reduction_no_dim": m_minmax("min"),
    "amax": m_amax("amax"), "amin": m_amax("amin"),
    "argmax": m_arg("argmax"), "argmin": m_arg("argmin"),
    "matmul": m_matmul, "nn.functional.linear": m_linear,
    "softmax": m_softmax("softmax"), "log_softmax": m_softmax("log_softmax"),
    "softmax.with_dtype": m_softmax("softmax"),
    "log_softmax.with_dtype": m_softmax("log_softmax"),
    "nn.functional.cross_entropy": m_class_loss("cross_entropy"),
    "nn.functional.nll_loss": m_class_loss("nll_loss"),
    "nn.functional.mse_loss": m_mse,
    "nn.functional.binary_cross_entropy_with_logits": m_bce,
    "nn.functional.group_norm": m_group_norm, "nn.functional.batch_norm": m_batch_norm,
    "nn.functional.batch_norm.without_cudnn": m_batch_norm,
    "nn.functional.layer_norm": m_layer_norm,
    "nn.functional.conv2d": m_conv("conv2d"),
    "nn.functional.conv_transpose2d": m_conv("conv_transpose2d"),
    "nn.functional.max_pool2d": m_max_pool, "nn.functional.avg_pool2d": m_avg_pool,
    "nn.functional.adaptive_avg_pool2d": m_adaptive,
    "nn.functional.interpolate.nearest": m_interp("nearest"),
    "nn.functional.interpolate.linear": m_interp("linear"),
    "nn.functional.interpolate.bilinear": m_interp("bilinear"),
    "nn.functional.interpolate.trilinear": m_interp("trilinear"),
    "nn.functional.upsample_nearest": m_interp("nearest", True),
    "nn.functional.upsample_bilinear": m_interp("bilinear", True),
    "nn.functional.max_unpool2d": m_unpool, "nn.functional.max_unpool2d.grad": m_unpool,
    "reshape": m_shape("reshape"), "view": m_shape("view"), "flatten": m_shape("flatten"),
    "squeeze": m_squeeze, "squeeze.multiple": m_squeeze, "unsqueeze": m_shape("unsqueeze"),
    "permute": m_shape("permute"), "transpose": m_shape("transpose"),
    "narrow": m_narrow, "cat": m_cat,
}
FAMILY = {
    "elementwise": ["abs", "neg", "exp", "log", "sqrt", "sigmoid", "tanh",
                    "nn.functional.relu", "clone", "nn.functional.leaky_relu",
                    "nn.functional.gelu", "add", "sub", "mul", "div.no_rounding_mode", "div.trunc_rounding",
                    "div.floor_rounding", "true_divide", "rsub",
                    "pow"],
    "reduce": ["sum", "mean", "max.reduction_with_dim", "max.reduction_no_dim",
               "min.reduction_with_dim", "min.reduction_no_dim", "amax", "amin", "argmax",
               "argmin"],
    "matmul": ["matmul", "nn.functional.linear"],
    "loss": ["softmax", "log_softmax", "softmax.with_dtype", "log_softmax.with_dtype",
             "nn.functional.cross_entropy", "nn.functional.nll_loss",
             "nn.functional.mse_loss", "nn.functional.binary_cross_entropy_with_logits"],
    "norm": ["nn.functional.group_norm", "nn.functional.batch_norm",
             "nn.functional.batch_norm.without_cudnn", "nn.functional.layer_norm"],
    "conv": ["nn.functional.conv2d", "nn.functional.conv_transpose2d"],
    "pool": ["nn.functional.max_pool2d", "nn.functional.avg_pool2d",
             "nn.functional.adaptive_avg_pool2d", "nn.functional.interpolate.nearest",
             "nn.functional.interpolate.linear", "nn.functional.interpolate.bilinear",
             "nn.functional.interpolate.trilinear", "nn.functional.upsample_nearest",
             "nn.functional.upsample_bilinear", "nn.functional.max_unpool2d",
             "nn.functional.max_unpool2d.grad"],
    "shape": ["reshape", "view", "flatten", "squeeze", "squeeze.multiple", "unsqueeze",
              "permute", "transpose", "narrow", "cat"],
}

# ------------------------------------------------------------------ writing --


def fmt_tensor(label, t, kind):
    t = t.detach().contiguous()
    if kind == "f64" and torch.equal(t.float().double(), t.double()):
        kind = "f32"  # float32-exact (maxima, shape ops, ...): 9 digits say it all
    dims = " ".join(str(d) for d in t.shape)
    lines = [f"tensor {label} {kind} {t.dim()} {dims}".rstrip()]
    flat = t.reshape(-1).tolist()
    if kind == "i64":
        vals = [str(int(v)) for v in flat]
    elif kind == "f32":
        vals = ["%.9g" % v for v in flat]
    else:
        vals = ["%.13g" % v for v in flat]
    for i in range(0, len(vals), 16):
        lines.append(" ".join(vals[i:i + 16]))
    return lines


def params(c):
    out = []
    for name, v in c.p.items():
        if isinstance(v, bool):
            v = int(v)
        is_list = isinstance(v, list)
        vals = v if is_list else [v]
        kind = "f64" if any(isinstance(e, float) for e in vals) else "i64"
        t = torch.tensor(vals, dtype=torch.float64 if kind == "f64" else torch.int64)
        out += fmt_tensor("p_" + name, t if is_list else t[0], kind)
    for name, v in c.s.items():
        out.append(f"note s_{name} {v}")
    return out


def inputs(c):
    out = []
    for i, t in enumerate(c.tensors):
        if t is not None:
            out += fmt_tensor(f"x{i}", t, "i64" if t.dtype == torch.int64 else "f32")
    return out


def convert(s, dtype):
    """The sample with float tensors as fresh leaves of dtype (requires_grad kept)."""
    def f(t):
        if isinstance(t, torch.Tensor) and t.dtype in FLOATS:
            return t.detach().to(dtype).contiguous().requires_grad_(t.requires_grad)
        if isinstance(t, torch.Tensor):
            return t.detach().clone().contiguous()
        return t
    return s.transform(f)


def run(op, s, c):
    """Calls the OpInfo's function; returns its outputs as a list."""
    out = op(s.input, *s.args, **s.kwargs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return outs


def grads(outs, c, dy):
    leaves = [(i, t) for i, t in enumerate(c.tensors)
              if t is not None and t.requires_grad]
    if not leaves or dy is None or not outs[0].requires_grad:
        return {}
    g = torch.autograd.grad(outs[0], [t for _, t in leaves], dy.to(outs[0].dtype),
                            allow_unused=True)
    return {i: (gi if gi is not None else torch.zeros_like(t))
            for (i, t), gi in zip(leaves, g)}


def numel(c):
    return sum(t.numel() for t in c.tensors if t is not None)


def max_err(a, b):
    if a.numel() == 0:
        return 0.0
    d = (a.double() - b.double()).abs()
    fin = torch.isfinite(b.double())
    return float(d[fin].max()) if fin.any() else 0.0


def seed_of(name):
    """A stable seed per OpInfo (Python's hash() of a str changes between runs)."""
    return zlib.crc32(name.encode())


def sample_case(name, op, s32_src, mapping, gen):
    """Lines of one sample's case (without the case/end lines)."""
    lines = [f"note opinfo {name}"]
    try:
        c32 = mapping(s32_src)
    except NE as e:
        return lines + [f"note skip {e}"]
    if numel(c32) > LIMIT:
        return lines + [f"note trimmed {numel(c32)}"]
    s64 = convert(s32_src, torch.float64)
    s32 = convert(s32_src, torch.float32)
    c64, c32 = mapping(s64), mapping(s32)
    # Inputs first: batch_norm updates its running stats in place.
    written = inputs(c32) + params(c32)
    out64 = run(op, s64, c64)
    out32 = run(op, s32, c32)
    dy = None
    if out64[0].dtype in FLOATS:
        dy = torch.randn(out64[0].shape, generator=gen).to(torch.float32)
    g64, g32 = grads(out64, c64, dy), grads(out32, c32, dy)
    lines += [f"note op {c32.key}"] + written
    for i, (o64, o32) in enumerate(zip(out64, out32)):
        label = "out" if i == 0 else f"out{i}"
        if o64.dtype in FLOATS:
            lines += fmt_tensor(label, o64, "f64")
            lines += fmt_tensor("e_" + label, torch.tensor(max_err(o32, o64)), "f64")
        else:
            lines += fmt_tensor(label, o64, "i64")
    if g64:
        lines += fmt_tensor("dy", dy, "f32")
    for i in g64:
        lines += fmt_tensor(f"g{i}", g64[i], "f64")
        lines += fmt_tensor(f"e_g{i}", torch.tensor(max_err(g32[i], g64[i])), "f64")
    # batch_norm updates its running stats in place: they are outputs too.
    if c64.key == "batch_norm" and c64.tensors[3] is not None and c64.p["training"]:
        lines += fmt_tensor("rm", c64.tensors[3], "f64")
        lines += fmt_tensor("rv", c64.tensors[4], "f64")
    return lines


def error_case(name, op, e, mapping):
    lines = [f"note opinfo {name}"]
    s = e.sample_input
    try:
        c = mapping(s)
        for t in c.tensors:
            if t is not None and t.dtype in FLOATS and t.dtype != torch.float32:
                t.data = t.data.float()
    except NE as err:
        return lines + [f"note skip error input: {err}"]
    try:
        op(s.input, *s.args, **s.kwargs)
    except Exception:  # noqa: BLE001 - the point of an error input
        pass
    else:
        return lines + ["note skip error input PyTorch accepts on the CPU"]
    regex = " ".join(e.error_regex.split()) or "(any message)"
    return lines + [f"note op {c.key}", f"note error {regex}"] + inputs(c) + params(c)


def extra_samples():
    """Arguments op_db's samples leave out (label smoothing, asymmetric "same"
    padding, broadcast pos_weight): (name, function, mapping, SampleInput) in the
    same form, tagged extra.*."""
    from torch.testing._internal.opinfo.core import SampleInput
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(5)

    def r(*shape, grad=True):
        return torch.randn(shape, generator=g).requires_grad_(grad)

    def idx(shape, C, ignore=None):
        t = torch.randint(0, C, shape, generator=g)
        if ignore is not None:
            t.view(-1)[::3] = ignore
        return t

    ce, bce = OPS["nn.functional.cross_entropy"], OPS[
        "nn.functional.binary_cross_entropy_with_logits"]
    conv = OPS["nn.functional.conv2d"]
    out = []
    for red in ("mean", "sum", "none"):
        out.append(("extra.cross_entropy", F.cross_entropy, ce,
                    SampleInput(r(5, 4), args=(idx((5,), 4),),
                                kwargs=dict(label_smoothing=0.2, reduction=red))))
        out.append(("extra.cross_entropy", F.cross_entropy, ce,
                    SampleInput(r(2, 3, 4, 2), args=(idx((2, 4, 2), 3, ignore=-100),),
                                kwargs=dict(weight=r(3, grad=False).abs(), reduction=red,
                                            label_smoothing=0.3))))
        out.append(("extra.cross_entropy", F.cross_entropy, ce,
                    SampleInput(r(2, 3, 5), args=(r(2, 3, 5).softmax(1).detach()
                                                   .requires_grad_(),),
                                kwargs=dict(weight=r(3, grad=False).abs(), reduction=red,
                                            label_smoothing=0.1))))
        out.append(("extra.binary_cross_entropy_with_logits",
                    F.binary_cross_entropy_with_logits, bce,
                    SampleInput(r(4, 3) * 5, args=(torch.rand(4, 3, generator=g),),
                                kwargs=dict(weight=r(4, 1, grad=False).abs(), pos_weight=r(3, grad=False).abs(),
                                            reduction=red))))
    for k, d in ((4, 1), (2, 3), (3, 2), (1, 1)):
        out.append(("extra.conv2d", F.conv2d, conv,
                    SampleInput(r(2, 4, 7, 6), args=(r(6, 2, k, k + 1), r(6)),
                                kwargs=dict(padding="same", dilation=(d, 1), groups=2))))
    return sorted(out, key=lambda e: e[0])  # one table row per name


def opinfo_name(o):
    return o.name + ("." + o.variant_test_name if o.variant_test_name else "")


def main(families):
    by_name = {opinfo_name(o): o for o in op_db}
    total = {}
    for family in [f for f in families if f in FAMILY]:
        lines = []
        for name in FAMILY[family]:
            o = by_name[name]
            # op_db draws its samples from the global generators: seeded per OpInfo, a
            # family's file depends on its own OpInfos only.
            torch.manual_seed(seed_of(name))
            random.seed(seed_of(name))
            gen = torch.Generator().manual_seed(seed_of(name))  # the upstream gradients
            fn = o.reference_inputs if o.reference_inputs_func is not None else \
                o.sample_inputs
            samples = list(fn("cpu", torch.float32, requires_grad=True))
            errors = list(o.error_inputs("cpu")) if o.error_inputs_func is not None else []
            mapping = OPS[name]
            n_ok = 0
            for k, s in enumerate(samples):
                body = sample_case(name, o.op, s, mapping, gen)
                n_ok += expressible(body)
                lines += [f"case {name}#{k}"] + body + ["end"]
            for k, e in enumerate(errors):
                body = error_case(name, o.op, e, mapping)
                lines += [f"case {name}#e{k}"] + body + ["end"]
            total[name] = (len(samples), n_ok, len(errors))
        path = os.path.join(DATA, f"opinfo_{family}.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {path} ({os.path.getsize(path) // 1024} KiB)")
    if "extra" not in families:
        return summary(total)
    lines, n_ok, extras = [], 0, extra_samples()
    gen = torch.Generator().manual_seed(seed_of("extra"))
    for k, (name, fn, mapping, smp) in enumerate(extras):
        body = sample_case(name, fn, smp, mapping, gen)
        n_ok += expressible(body)
        n, ok, ne = total.get(name, (0, 0, 0))
        total[name] = (n + 1, ok + expressible(body), ne)
        lines += [f"case {name}#{k}"] + body + ["end"]
    with open(os.path.join(DATA, "opinfo_extra.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote opinfo_extra.txt: {n_ok} of {len(extras)} extra samples expressible")
    return summary(total)


def expressible(body):
    """Whether a sample counts as expressible: the README's definition, trimmed
    samples (expressible, only too large to store) included."""
    return not any(b.startswith("note skip ") for b in body)


def summary(total):
    ns = sum(v[0] for v in total.values())
    nok = sum(v[1] for v in total.values())
    for name, (n, ok, ne) in total.items():
        print(f"  {name:48s} {ok:5d} of {n:5d} expressible, {ne} error inputs")
    print(f"{nok} of {ns} samples expressible ({100.0 * nok / max(ns, 1):.1f}%)")


if __name__ == "__main__":
    # Families to write (default all): each file comes out the same either way.
    wanted = sys.argv[1:] or list(FAMILY) + ["extra"]
    unknown = [f for f in wanted if f not in FAMILY and f != "extra"]
    if unknown:
        sys.exit(f"unknown families {unknown}; known: {list(FAMILY)} and extra")
    sys.exit(main(wanted))
