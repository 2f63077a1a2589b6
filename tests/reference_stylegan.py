"""An independent StyleGAN2 forward written from formats.md §1.9 for cross-checking.

It uses the *non-fused* formulation (modulate activations, shared conv, then scale by the
demodulation coefficients computed in closed form) and separable 1-D FIR filters, so it shares
no code path with ``coral_core.stylegan`` beyond torch itself.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TAPS = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8.0


def _fir_1d(x: torch.Tensor, dim: int, pad: tuple[int, int], gain: float) -> torch.Tensor:
    """Filter along one spatial dim with the [1,3,3,1]/8 taps times ``gain``."""
    x = x.movedim(dim, -1)
    shape = x.shape
    x = F.pad(x.reshape(-1, 1, shape[-1]), pad)
    x = F.conv1d(x, (TAPS * gain).view(1, 1, 4))
    return x.reshape(*shape[:-1], x.shape[-1]).movedim(-1, dim)


def _blur(x: torch.Tensor, pad: tuple[int, int], gain: float) -> torch.Tensor:
    return _fir_1d(_fir_1d(x, 2, pad, math.sqrt(gain)), 3, pad, math.sqrt(gain))


def _upsample(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    z = torch.zeros(b, c, h, 2, w, 2, dtype=x.dtype)
    z[:, :, :, 0, :, 0] = x
    return _blur(z.reshape(b, c, 2 * h, 2 * w), (2, 1), 4.0)


def _fc(sd: dict, prefix: str, x: torch.Tensor, lr: float, act: bool) -> torch.Tensor:
    w, b = sd[prefix + "weight"], sd[prefix + "bias"]
    y = x @ (w * lr / math.sqrt(w.shape[1])).T + b * lr
    return F.leaky_relu(y, 0.2) * math.sqrt(2) if act else y


def _layer(sd: dict, p: str, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None,
           up: bool, gain: float, clamp: float | None) -> torch.Tensor:
    weight = sd[p + "weight"]
    s = _fc(sd, p + "affine.", w, 1.0, False)
    d = torch.rsqrt((s.square() @ weight.square().sum(dim=[2, 3]).T) + 1e-8)
    xs = x * s[:, :, None, None]
    if up:
        y = F.conv_transpose2d(xs, weight.transpose(0, 1), stride=2)
        y = y * d[:, :, None, None]
        y = _blur(y, (1, 1), 4.0)
    else:
        y = F.conv2d(xs, weight, padding=1) * d[:, :, None, None]
    if noise is not None:
        y = y + noise * sd[p + "noise_strength"]
    y = F.leaky_relu(y + sd[p + "bias"][None, :, None, None], 0.2) * math.sqrt(2) * gain
    return y if clamp is None else y.clamp(-clamp * gain, clamp * gain)


def _torgb(sd: dict, p: str, x: torch.Tensor, w: torch.Tensor, clamp: float | None
           ) -> torch.Tensor:
    weight = sd[p + "weight"]
    s = _fc(sd, p + "affine.", w, 1.0, False) / math.sqrt(weight.shape[1])
    y = F.conv2d(x * s[:, :, None, None], weight) + sd[p + "bias"][None, :, None, None]
    return y if clamp is None else y.clamp(-clamp, clamp)


def reference_mapping(sd: dict, cfg, z: torch.Tensor, psi: float = 1.0,
                      cutoff: int | None = None) -> torch.Tensor:
    x = z / torch.sqrt(z.square().mean(1, keepdim=True) + 1e-8)
    for i in range(cfg.mapping_layers):
        x = _fc(sd, f"mapping.fc{i}.", x, cfg.mapping_lr_multiplier, True)
    ws = x[:, None].repeat(1, cfg.num_ws, 1)
    avg = sd["mapping.w_avg"]
    k = cfg.num_ws if cutoff is None else cutoff
    ws[:, :k] = avg + psi * (ws[:, :k] - avg)
    return ws


def reference_synthesis(sd: dict, cfg, ws: torch.Tensor, noise_mode: str = "const"
                        ) -> torch.Tensor:
    clamp = cfg.conv_clamp
    arch = cfg.architecture
    k = 0
    x = img = None
    for r in cfg.block_resolutions:
        p = f"synthesis.b{r}."

        def nz(name: str, p: str = p) -> torch.Tensor | None:
            return sd[p + name + ".noise_const"] if noise_mode == "const" else None

        if r == 4:
            x = sd[p + "const"][None].repeat(ws.shape[0], 1, 1, 1)
            x = _layer(sd, p + "conv1.", x, ws[:, k], nz("conv1"), False, 1.0, clamp)
            k += 1
        else:
            y = None
            if arch == "resnet":
                sw = sd[p + "skip.weight"]
                y = _upsample(F.conv2d(x, sw / math.sqrt(sw.shape[1]))) * math.sqrt(0.5)
            x = _layer(sd, p + "conv0.", x, ws[:, k], nz("conv0"), True, 1.0, clamp)
            g = math.sqrt(0.5) if arch == "resnet" else 1.0
            x = _layer(sd, p + "conv1.", x, ws[:, k + 1], nz("conv1"), False, g, clamp)
            if y is not None:
                x = x + y
            k += 2
        if img is not None:
            img = _upsample(img)
        if arch == "skip" or r == cfg.img_resolution:
            rgb = _torgb(sd, p + "torgb.", x, ws[:, k], clamp)
            img = rgb if img is None else img + rgb
    return img
