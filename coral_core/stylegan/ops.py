"""The few numerical primitives StyleGAN2 needs, in plain PyTorch.

NVlabs ships CUDA kernels for these (upfirdn2d, bias_act); they are what makes the existing
ComfyUI packs fail to install. Written here with standard conv ops, they are a little slower on
the GPU but match the reference to float32 rounding, and run on any device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def make_resample_filter() -> torch.Tensor:
    """The [1,3,3,1] separable FIR filter, normalised to sum 1 (stored as an NVlabs buffer)."""
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(taps, taps)
    return f / f.sum()


def fir_filter(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int, int, int],
               gain: float) -> torch.Tensor:
    """Depthwise FIR filtering with explicit padding (left, right, top, bottom).

    The filter is symmetric, so cross-correlation equals the true convolution NVlabs computes.
    """
    channels = x.shape[1]
    x = F.pad(x, pad)
    weight = (f * gain).to(x.dtype)[None, None].expand(channels, 1, *f.shape)
    return F.conv2d(x, weight, groups=channels)


def zero_insert_2x(x: torch.Tensor) -> torch.Tensor:
    """Upsample by inserting zeros: sample (i, j) goes to (2i, 2j)."""
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, h * 2, w * 2)
    out[:, :, ::2, ::2] = x
    return out


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """NVlabs ``upfirdn2d.upsample2d`` with up=2: zero insertion, pad (2, 1), filter, gain 4."""
    return fir_filter(zero_insert_2x(x), f, (2, 1, 2, 1), gain=4.0)


def lrelu_gain(x: torch.Tensor, gain: float, clamp: float | None) -> torch.Tensor:
    """``bias_act`` with act='lrelu' (alpha 0.2) after the bias was added: gain, then clamp."""
    x = F.leaky_relu(x, 0.2) * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                     demodulate: bool, up: int, resample_filter: torch.Tensor | None,
                     fused: bool | None = None) -> torch.Tensor:
    """Per-sample modulated convolution.

    x [B, I, H, W], weight [O, I, k, k], styles [B, I]. With up=2 the kernel is applied as a
    transposed convolution (no flip) and then blurred, exactly as NVlabs ``conv2d_resample``.
    Two equivalent forms: ``fused`` (per-sample weights, one grouped conv: NVlabs' inference
    path) and unfused (scale the input by the styles, one shared-weight conv, scale the output
    by the demodulation coefficients). ``None`` picks by :data:`FUSED_MODCONV`.
    """
    use_fused = FUSED_MODCONV if fused is None else fused
    if use_fused:
        return _modconv_fused(x, weight, styles, demodulate, up, resample_filter)
    return _modconv_unfused(x, weight, styles, demodulate, up, resample_filter)


# Unfused by default: measured faster for forward + backward w.r.t. W+ (every edit and
# inversion step) on the CPU (see `coral bench hotpath`), the same maths as the fused form.
FUSED_MODCONV = False


def _modconv_unfused(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     demodulate: bool, up: int, resample_filter: torch.Tensor | None
                     ) -> torch.Tensor:
    kh = weight.shape[-1]
    x = x * styles.to(x.dtype)[:, :, None, None]
    if up == 1:
        y = F.conv2d(x, weight.to(x.dtype), padding=kh // 2)
    else:
        y = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2, padding=0)
        assert resample_filter is not None
        y = fir_filter(y, resample_filter, (1, 1, 1, 1), gain=4.0)
    if demodulate:
        # sum over (i, k) of (W_oik s_i)^2 = (s^2) @ (sum_k W_oik^2)
        d = (styles.square() @ weight.square().sum(dim=[2, 3]).T + 1e-8).rsqrt()
        y = y * d.to(y.dtype)[:, :, None, None]
    return y


def _modconv_fused(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                   demodulate: bool, up: int, resample_filter: torch.Tensor | None
                   ) -> torch.Tensor:
    batch, in_ch, height, width = x.shape
    out_ch, _, kh, kw = weight.shape
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        d = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        w = w * d[:, :, None, None, None]
    x = x.reshape(1, batch * in_ch, height, width)
    if up == 1:
        w = w.reshape(batch * out_ch, in_ch, kh, kw)
        y = F.conv2d(x, w, padding=kh // 2, groups=batch)
    else:
        w = w.transpose(1, 2).reshape(batch * in_ch, out_ch, kh, kw)
        y = F.conv_transpose2d(x, w, stride=2, padding=0, groups=batch)
        assert resample_filter is not None
        y = fir_filter(y, resample_filter, (1, 1, 1, 1), gain=4.0)
    return y.reshape(batch, out_ch, *y.shape[2:])
