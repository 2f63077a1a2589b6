"""Image conversions between generator tensors, uint8 arrays and PNG files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_path
from .stylegan.generator import image_to_uint8

__all__ = ["image_to_uint8", "save_png", "save_tensor_images", "to_unit_range"]


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an HxWxC (or HxW) uint8 array as PNG, atomically."""
    path = Path(path)
    img = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1
                          else array)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def save_tensor_images(img: torch.Tensor, paths: list[Path]) -> list[Path]:
    """Generator output [B, C, H, W] in [-1, 1] -> one PNG per sample."""
    arrays = image_to_uint8(img)
    return [save_png(a, p) for a, p in zip(arrays, paths)]


def to_unit_range(img: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW -> [0, 1] NHWC float (ComfyUI's IMAGE layout)."""
    return ((img.detach().to(torch.float32) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
