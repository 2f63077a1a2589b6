"""Seeing what an edit selected: per-layer mask grid, heatmap overlay, and a text summary."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..stylegan import Generator
from .selectors import SegmentSelector

if TYPE_CHECKING:
    from .edit import Edit


def selection_summary(G: Generator, edit: "Edit", threshold: float = 0.5) -> dict[str, Any]:
    """Which layers (and, for SS, which segments) the edit selects."""
    out: dict[str, Any] = {}
    if isinstance(edit.selector, SegmentSelector):
        pairs = edit.selector.selection(threshold)
        out["selection"] = {"pairs": pairs,
                            "layers": sorted({layer for layer, _ in pairs}),
                            "segments": sorted({k for _, k in pairs})}
        out["segment_weights"] = torch.sigmoid(edit.selector.logits[0]).detach().round(
            decimals=3).tolist()
    return out


def layer_labels(G: Generator, masks: Sequence[torch.Tensor | None]) -> list[str]:
    return [f"L{c.index} {c.resolution}px {0.0 if m is None else float(m.mean()):.2f}"
            for c, m in zip(G.conv_layers, masks)]


def mask_grid(G: Generator, masks: Sequence[torch.Tensor | None], sample: int = 0,
              cell: int = 96) -> np.ndarray:
    """One tile per conv layer (mask upsampled, labelled layer / resolution / mean area)."""
    labels = layer_labels(G, [None if m is None else m[sample:sample + 1] for m in masks])
    tiles = []
    for m, label in zip(masks, labels):
        if m is None:
            arr = np.zeros((cell, cell), dtype=np.uint8)
        else:
            up = F.interpolate(m[sample:sample + 1].detach().float().cpu(), size=(cell, cell),
                               mode="nearest")[0, 0]
            arr = (up.clamp(0, 1).numpy() * 255).astype(np.uint8)
        tile = Image.fromarray(arr).convert("RGB")
        canvas = Image.new("RGB", (cell, cell + 14), (30, 30, 30))
        canvas.paste(tile, (0, 14))
        ImageDraw.Draw(canvas).text((2, 1), label, fill=(255, 255, 0))
        tiles.append(np.asarray(canvas))
    cols = min(len(tiles), 8)
    rows = -(-len(tiles) // cols)
    h, w = tiles[0].shape[:2]
    grid = np.full((rows * h, cols * w, 3), 20, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    return grid


def effective_mask(masks: Sequence[torch.Tensor | None], resolution: int) -> torch.Tensor:
    """Where the edit can act: the per-pixel maximum of all layer masks at image resolution.

    [B, H, W] in [0, 1]; this is the "combined mask" the nodes output and the evaluation scores.
    """
    ups = [F.interpolate(m.detach().float(), size=(resolution, resolution), mode="bilinear",
                         align_corners=False) for m in masks if m is not None]
    if not ups:
        raise ValueError("no layer is selected")
    return torch.stack(ups).amax(0)[:, 0].clamp(0, 1)


def overlay(image_uint8: np.ndarray, mask: torch.Tensor, alpha: float = 0.55) -> np.ndarray:
    """Red-yellow heatmap of ``mask`` [H, W] over an HxWx3 uint8 image."""
    h, w = image_uint8.shape[:2]
    m = F.interpolate(mask[None, None].float().cpu(), size=(h, w), mode="bilinear",
                      align_corners=False)[0, 0].clamp(0, 1).numpy()
    heat = np.stack([np.ones_like(m), m, np.zeros_like(m)], -1) * 255
    a = (alpha * m)[..., None]
    return (image_uint8 * (1 - a) + heat * a).astype(np.uint8)
