"""Image metrics shared by inversion and evaluation (images in [-1, 1], NCHW)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR per image on the [0, 1] scale; ``mask`` [B, H, W] restricts it to some pixels."""
    a, b = a.clamp(-1, 1), b.clamp(-1, 1)  # as displayed: generator output can overshoot
    diff = ((a - b) / 2).square().mean(1)  # [B, H, W] on the [0, 1] scale
    if mask is None:
        mse = diff.flatten(1).mean(1)
    else:
        w = mask.to(diff.dtype)
        area = w.flatten(1).sum(1)
        mse = (diff * w).flatten(1).sum(1) / area.clamp_min(1e-8)
        mse = torch.where(area > 0, mse, torch.full_like(mse, float("nan")))  # no pixels
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean SSIM per image (uniform window, on [0, 1], averaged over channels)."""
    x, y = (a.clamp(-1, 1) + 1) / 2, (b.clamp(-1, 1) + 1) / 2
    pad = window // 2
    mu = lambda t: F.avg_pool2d(F.pad(t, (pad,) * 4, mode="reflect"), window, 1)  # noqa: E731
    mx, my = mu(x), mu(y)
    vx = mu(x * x) - mx * mx
    vy = mu(y * y) - my * my
    cxy = mu(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)
