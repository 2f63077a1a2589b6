"""Image conversions between generator tensors, uint8 arrays and PNG files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_path
from .errors import InputError
from .stylegan.generator import image_to_uint8

__all__ = ["image_to_uint8", "save_png", "save_tensor_images", "to_unit_range", "load_photo"]

MAX_PHOTO_PIXELS = 64_000_000


def load_photo(path: str | Path) -> np.ndarray:
    """A photo file as an HxWx3 (or HxWx4 with alpha) uint8 array, whatever its mode.

    PIL's raw arrays are not pictures for every mode: 16-bit grey arrives as 0..65535 integers
    (all white if read as 8-bit), CMYK's 4th channel is K (not alpha), and palette images are
    colour indices. Each is converted to RGB(A) by PIL first. Huge images are refused before
    they are decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PHOTO_PIXELS:
                raise InputError(f"{path}: {img.width}x{img.height} px is too large (at most "
                                 f"{MAX_PHOTO_PIXELS // 1_000_000} megapixels); downscale it")
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                grey = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or grey.max() > 255 else 255.0
                return np.clip(grey / top * 255 + 0.5, 0, 255).astype(np.uint8)[..., None] \
                    .repeat(3, -1)
            has_alpha = img.mode in ("RGBA", "LA", "PA") or \
                (img.mode == "P" and "transparency" in img.info)
            return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the image ({exc})") from exc


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
