"""Optional identity loss for faces: ArcFace IR-SE50 (TreB1eN/InsightFace layout, formats.md
§4.2) loaded from the user's ``model_ir_se50.pth`` with weights_only=True and strict keys.

Used as in StyleCLIP / e4e: crop the face region (rows 35:223, cols 32:220 of a 256 px image,
scaled for other resolutions), pool to 112 px, embed, and penalise 1 - cos(edited, original).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelFormatError

STAGES = ((64, 3), (128, 4), (256, 14), (512, 3))


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w))))


class BottleneckIRSE(nn.Module):
    def __init__(self, in_ch: int, depth: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.shortcut_layer: nn.Module
        if in_ch == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_ch, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth), SEModule(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """Backbone(input_size=112, num_layers=50, mode='ir_se'); output: unit-norm 512-d."""

    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(64), nn.PReLU(64))
        units, in_ch = [], 64
        for depth, count in STAGES:
            for i in range(count):
                units.append(BottleneckIRSE(in_ch, depth, 2 if i == 0 else 1))
                in_ch = depth
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.6), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_layer(self.body(self.input_layer(x)))
        return F.normalize(x, dim=-1)


def load_irse50(path: str | Path) -> IRSE50:
    from ..formats.weights import load_weights_file, unwrap_state_dict

    path = Path(path)
    state = unwrap_state_dict(load_weights_file(path, "IR-SE50 weights"))
    model = IRSE50()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(f"{path}: weights do not match the IR-SE50 layout "
                               f"(model_ir_se50.pth): {str(exc)[:300]}") from exc
    return model.train(False).requires_grad_(False)


class IdentityLoss(nn.Module):
    """1 - cos of IR-SE50 embeddings of the face crops of two images in [-1, 1]."""

    def __init__(self, net: IRSE50) -> None:
        super().__init__()
        self.net = net

    def embed(self, img: torch.Tensor) -> torch.Tensor:
        r = img.shape[-1]
        s = r / 256
        crop = img[:, :, round(35 * s):round(223 * s), round(32 * s):round(220 * s)]
        return self.net(F.adaptive_avg_pool2d(crop, 112))

    def forward(self, edited: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self.embed(original)
        return (1 - (self.embed(edited) * ref).sum(-1)).mean()
