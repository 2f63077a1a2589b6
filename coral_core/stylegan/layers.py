"""StyleGAN2 layers, with parameter and buffer names identical to NVlabs StyleGAN2-ADA.

Identical names mean an NVlabs ``G_ema`` state dict loads with ``strict=True`` and no renaming,
and our own safetensors files use the same keys, so a user can inspect them with NVlabs tools.
Layers take their noise tensor explicitly so that the CORAL blend can feed the same noise to the
original and the edited branch (re-drawing noise per branch is a known bug of a published
re-implementation).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .ops import (SQRT2, fir_filter, lrelu_gain, make_resample_filter, modulated_conv2d,
                  upsample2d)


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer: runtime weight W * lr / sqrt(in), bias b * lr."""

    def __init__(self, in_features: int, out_features: int, *, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return lrelu_gain(x.matmul(w.t()) + b, SQRT2, None)


class MappingNetwork(nn.Module):
    """z -> w. Truncation happens here, around the tracked ``w_avg`` buffer."""

    w_avg: torch.Tensor

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int,
                 lr_multiplier: float, w_avg_beta: float) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws = z_dim, w_dim, num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(
                features[i], features[i + 1], activation="lrelu", lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = False
                ) -> torch.Tensor:
        from .ops import normalize_2nd_moment

        x = normalize_2nd_moment(z.to(torch.float32))
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws = ws.clone()
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + noise + bias + lrelu (+ clamp), optionally upsampling by 2."""

    noise_const: torch.Tensor
    resample_filter: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, *,
                 up: int = 1, use_noise: bool = True, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", make_resample_filter())

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None,
                gain: float = 1.0) -> torch.Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, up=self.up,
                             resample_filter=self.resample_filter)
        if self.use_noise and noise is not None:
            x = x + noise * self.noise_strength
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return lrelu_gain(x + self.bias[None, :, None, None], SQRT2 * gain, clamp)

    def make_noise(self, batch: int, mode: str, device: torch.device,
                   generator: torch.Generator | None = None) -> torch.Tensor | None:
        """The noise this layer adds, resolved once so every branch can share it."""
        if not self.use_noise or mode == "none":
            return None
        if mode == "const":
            return self.noise_const[None, None]
        if mode == "random":
            return torch.randn(batch, 1, self.resolution, self.resolution, device=device,
                               generator=generator)
        raise ValueError(f"noise mode must be 'const', 'random' or 'none', got {mode!r}")


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels, without demodulation or activation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        y = modulated_conv2d(x, self.weight, styles, demodulate=False, up=1,
                             resample_filter=None)
        y = y + self.bias[None, :, None, None]
        if self.conv_clamp is not None:
            y = y.clamp(-self.conv_clamp, self.conv_clamp)
        return y.to(torch.float32)


class ResnetSkip(nn.Module):
    """The resnet architecture's 1x1 upsampling shortcut (no bias, no clamp)."""

    resample_filter: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.register_buffer("resample_filter", make_resample_filter())
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.conv2d(x, self.weight * self.weight_gain)
        return upsample2d(y, self.resample_filter) * math.sqrt(0.5)


class SynthesisBlock(nn.Module):
    """One resolution: (const | conv0) + conv1, then toRGB / skip depending on architecture."""

    resample_filter: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int, *, is_last: bool, architecture: str, use_noise: bool,
                 conv_clamp: float | None) -> None:
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.architecture, self.is_last = architecture, is_last
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        use_noise=use_noise, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    use_noise=use_noise, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1 if (is_last or architecture == "skip") else 0
        if self.num_torgb:
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        if in_channels != 0 and architecture == "resnet":
            self.skip = ResnetSkip(in_channels, out_channels)
        self.register_buffer("resample_filter", make_resample_filter())

    def upsample_image(self, img: torch.Tensor) -> torch.Tensor:
        return upsample2d(img, self.resample_filter)

    def conv_layers(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]


__all__ = ["FullyConnectedLayer", "MappingNetwork", "SynthesisLayer", "ToRGBLayer",
           "ResnetSkip", "SynthesisBlock", "fir_filter"]
