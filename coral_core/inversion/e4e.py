"""e4e (encoder4editing) initialiser: load ``e4e_ffhq_encode.pt`` and encode photos to W+.

The layout is formats.md §4.1: an IR-SE body (4 stages of 3/4/14/3 units) whose taps after units
6, 20 and 23 feed 18 map-to-style blocks through a small feature pyramid; codes = E(x) +
latent_avg. Channel widths and the number of styles are read off the tensors, so the loader is
not tied to one size. Read with ``weights_only=True``; nothing in the file runs.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..editing.identity import BottleneckIRSE
from ..errors import ModelFormatError

COARSE, MIDDLE = 3, 7
STAGE_UNITS = (3, 4, 14, 3)


class StyleBlock(nn.Module):
    """Stride-2 convs down to 1x1, then an equalised linear layer (lr multiplier 1)."""

    def __init__(self, channels: int, spatial: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x).flatten(1)
        w = self.linear.weight / math.sqrt(self.linear.weight.shape[1])
        return F.linear(x, w, self.linear.bias)


class Encoder4Editing(nn.Module):
    def __init__(self, depths: tuple[int, int, int, int], n_styles: int, style_dim: int) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, depths[0], 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(depths[0]), nn.PReLU(depths[0]))
        units, in_ch = [], depths[0]
        for depth, count in zip(depths, STAGE_UNITS):
            for i in range(count):
                units.append(BottleneckIRSE(in_ch, depth, 2 if i == 0 else 1))
                in_ch = depth
        self.body = nn.Sequential(*units)
        self.styles = nn.ModuleList(
            StyleBlock(style_dim, 16 if i < COARSE else 32 if i < MIDDLE else 64)
            for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(depths[2], style_dim, 1)
        self.latlayer2 = nn.Conv2d(depths[1], style_dim, 1)

    @staticmethod
    def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=True) + y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(x)
        c1 = c2 = c3 = x
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == 6:
                c1 = x
            elif i == 20:
                c2 = x
            elif i == 23:
                c3 = x
        w0 = self.styles[0](c3)
        codes = [w0]
        features, p2 = c3, c3
        for i in range(1, len(self.styles)):
            if i == COARSE:
                p2 = self._upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == MIDDLE:
                features = self._upsample_add(p2, self.latlayer2(c1))
            codes.append(w0 + self.styles[i](features))
        return torch.stack(codes, 1)


class E4E:
    """The loaded encoder plus latent_avg; ``encode`` takes images in [-1, 1]."""

    def __init__(self, encoder: Encoder4Editing, latent_avg: torch.Tensor | None) -> None:
        self.encoder = encoder.train(False).requires_grad_(False)
        self.latent_avg = latent_avg

    @torch.no_grad()
    def encode(self, img: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(img, size=(256, 256), mode="bilinear", align_corners=False,
                          antialias=True) if img.shape[-1] != 256 else img
        codes = self.encoder(x.to(next(self.encoder.parameters()).device))
        if self.latent_avg is not None:
            codes = codes + self.latent_avg.to(codes.device)
        return codes


def load_e4e(path: str | Path) -> E4E:
    from ..formats.weights import load_weights_file

    path = Path(path)
    ckpt: Any = load_weights_file(path, "e4e checkpoint")
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not any(k.startswith("encoder.") for k in sd):
        raise ModelFormatError(f"{path}: no 'encoder.' weights: not an e4e checkpoint "
                               "(e4e_ffhq_encode.pt)")
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    try:
        depths = tuple(int(enc[f"body.{i}.res_layer.1.weight"].shape[0]) for i in (0, 3, 7, 21))
        n_styles = 1 + max(int(m.group(1)) for k in enc
                           if (m := re.match(r"styles\.(\d+)\.", k)))
        style_dim = int(enc["styles.0.linear.weight"].shape[0])
    except (KeyError, ValueError) as exc:
        raise ModelFormatError(f"{path}: unexpected e4e encoder layout ({exc})") from exc
    model = Encoder4Editing(depths, n_styles, style_dim)  # type: ignore[arg-type]
    try:
        model.load_state_dict(enc, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(f"{path}: e4e encoder weights do not fit: {str(exc)[:300]}"
                               ) from exc
    latent_avg = ckpt.get("latent_avg")
    if isinstance(latent_avg, torch.Tensor) and latent_avg.ndim == 1:
        latent_avg = latent_avg[None].repeat(n_styles, 1)
    return E4E(model, latent_avg if isinstance(latent_avg, torch.Tensor) else None)
