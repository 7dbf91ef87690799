"""PyTorch references for tg_conv2d and tg_conv_transpose2d (tests/data/conv.txt).

Each case holds x, w, optional b, an upstream gradient gy, the output y and the
gradients dx, dw, db, plus `params` (i64): stride h w, padding h w, dilation h w,
groups, output_padding h w, transposed (0/1).
Run with /usr/bin/python3 (torch 1.13)."""
import torch
import torch.nn.functional as F
from refio import RefWriter, leaf

gen = torch.Generator().manual_seed(20240601)
w_out = RefWriter("conv")


def case(name, x_shape, w_shape, bias=True, stride=(1, 1), padding=(0, 0),
         dilation=(1, 1), groups=1, output_padding=(0, 0), transposed=False):
    x = leaf(*x_shape, gen=gen)
    w = leaf(*w_shape, gen=gen, scale=0.5)
    cout = w_shape[1] * groups if transposed else w_shape[0]
    b = leaf(cout, gen=gen) if bias else None
    if transposed:
        y = F.conv_transpose2d(x, w, b, stride, padding, output_padding, groups,
                               dilation)
    else:
        y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(gy)
    params = torch.tensor([*stride, *padding, *dilation, groups, *output_padding,
                           int(transposed)], dtype=torch.int64)
    tensors = dict(params=params, x=x, w=w, gy=gy, y=y, dx=x.grad, dw=w.grad)
    if bias:
        tensors.update(b=b, db=b.grad)
    w_out.case(name, **tensors)


# conv2d
case("conv_basic", (2, 3, 5, 6), (4, 3, 3, 3))
case("conv_stride2_pad1", (2, 2, 7, 6), (3, 2, 3, 3), stride=(2, 2), padding=(1, 1))
case("conv_dilation2", (1, 2, 7, 8), (3, 2, 3, 3), padding=(2, 1), dilation=(2, 2))
case("conv_groups2", (2, 4, 5, 6), (4, 2, 3, 2), padding=(1, 0), groups=2)
case("conv_depthwise", (1, 3, 5, 6), (3, 1, 3, 3), padding=(1, 1), groups=3,
     bias=False)
case("conv_1x1", (3, 4, 3, 4), (5, 4, 1, 1))
case("conv_1x1_groups2", (2, 4, 3, 5), (6, 2, 1, 1), groups=2, bias=False)
case("conv_1x1_stride2", (2, 3, 5, 5), (4, 3, 1, 1), stride=(2, 2))
case("conv_nonsquare", (2, 2, 7, 10), (3, 2, 2, 5), stride=(2, 3), padding=(1, 2),
     dilation=(1, 2), bias=False)
case("conv_kernel_is_input", (1, 1, 5, 5), (2, 1, 5, 5), bias=False)
# stride 1 with no more output than input channels: dx takes the flipped-weight path,
# including padding above d*(k-1) (cropping) and mixed dilations.
case("conv_dx_as_conv", (2, 4, 6, 5), (3, 4, 3, 3), padding=(1, 1))
case("conv_dx_crop", (1, 3, 3, 4), (2, 3, 1, 1), padding=(1, 1))
case("conv_dx_dilated", (1, 4, 7, 6), (2, 2, 3, 2), padding=(2, 1), dilation=(2, 3),
     groups=2)
case("conv_mnist_like", (2, 1, 9, 9), (6, 1, 3, 3), padding=(1, 1))
# conv_transpose2d
case("convt_basic", (2, 3, 4, 5), (3, 2, 3, 3), transposed=True)
case("convt_stride2_outpad1", (2, 3, 3, 4), (3, 2, 3, 3), stride=(2, 2),
     padding=(1, 1), output_padding=(1, 1), transposed=True)
case("convt_dilation_groups", (1, 4, 5, 4), (4, 3, 3, 2), stride=(2, 1),
     padding=(1, 0), dilation=(2, 2), groups=2, output_padding=(1, 0),
     transposed=True)
case("convt_1x1", (2, 3, 4, 4), (3, 5, 1, 1), transposed=True, bias=False)
case("convt_unet_up", (2, 4, 3, 4), (4, 2, 2, 2), stride=(2, 2), transposed=True)
case("convt_outpad_dilation", (1, 2, 4, 4), (2, 3, 3, 3), dilation=(2, 2),
     output_padding=(1, 1), transposed=True, bias=False)
w_out.save()
