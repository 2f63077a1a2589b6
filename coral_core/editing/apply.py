"""Applying learned edits to latents: strength, mask threshold, stacking, strength sweeps.

Apply = one original pass (its features drive CAN masks and SS segments) + one blended pass in
which every edit blends over the ones before it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..validate import MAX_STRENGTH, finite
from ..errors import InputError
from ..stylegan import Generator
from .blend import stacked_synthesis
from .edit import Edit
from .memory import images_per_chunk
from .selectors import composite


@dataclass
class ApplyResult:
    edited: torch.Tensor                          # [B, 3, H, W] in [-1, 1]
    original: torch.Tensor | None                 # [B, 3, H, W] (None if not requested)
    masks: list[list[torch.Tensor | None]]        # per edit, per conv layer
    transferred: list[str] = field(default_factory=list)  # per-image edits used on other latents


@torch.no_grad()
def apply_edits(G: Generator, ws: torch.Tensor, edits: Sequence[Edit],
                strength: float | Sequence[float] = 1.0, threshold: float | None = None,
                noise_mode: str = "const", return_original: bool = True,
                transfer: bool = False) -> ApplyResult:
    """Edited (and original) images for W+ codes ``ws``, plus every edit's per-layer masks.

    Without ``return_original`` the plain pass only runs as far as the masks need features
    (the SS catalogue layer, or every layer for CAN), and the blended pass reuses it up to the
    first selected layer: the cheapest way to get the edited image.
    """
    if not edits:
        raise InputError("no edit given")
    for value in ([strength] if isinstance(strength, (int, float)) else list(strength)):
        finite("strength", value, -MAX_STRENGTH, MAX_STRENGTH)
    if threshold is not None:
        finite("threshold", threshold, 0.0, 1.0)
    ws = G.check_ws(ws.to(G.w_avg.device))
    strengths = [float(strength)] * len(edits) if isinstance(strength, (int, float)) \
        else [float(s) for s in strength]
    if len(strengths) != len(edits):
        raise InputError(f"{len(strengths)} strengths for {len(edits)} edits")
    transferred = []
    for e in edits:
        e.check_generator(G)
        e.check_batch(ws.shape[0])
        if e.check_latents(ws, transfer):
            transferred.append(e.prompt)
        e.to(ws.device)
    noise = G.make_noise(ws.shape[0], noise_mode)
    original = None
    if return_original or any(e.composite for e in edits):
        original, feats = G.synthesize_with_features(ws, noise=noise)
    else:
        feats = G.features_up_to(ws, noise, max(e.feature_layers_needed(G) for e in edits))
    pairs, all_masks, regions = [], [], []
    for e, s in zip(edits, strengths):
        masks = e.masks(G, feats, threshold)
        if s != 0:  # strength 0 is the identity exactly, not just up to rounding
            pairs.append((e.delta(ws) * s, masks))
            regions.append(e.region(G, feats, original))
        all_masks.append(masks)
    edited = stacked_synthesis(G, ws, pairs, noise, original_features=feats)
    if regions and all(r is not None for r in regions) and original is not None:
        union = torch.stack([r for r in regions if r is not None]).amax(0)
        edited = composite(edited, original, union)
    return ApplyResult(edited, original if return_original else None, all_masks, transferred)


# (latents done, latents in all); may raise to cancel
ApplyProgress = Callable[[int, int], None]


def apply_in_chunks(G: Generator, ws: torch.Tensor, edits: Sequence[Edit],
                    strength: float | Sequence[float] = 1.0, threshold: float | None = None,
                    transfer: bool = False, chunk: int | None = None,
                    progress: ApplyProgress | None = None) -> ApplyResult:
    """``apply_edits`` over many latents, ``chunk`` at a time (default: as many as fit the
    memory budget, memory.images_per_chunk), reporting progress before each chunk, so a large
    batch neither runs out of memory nor sits silent. The result is one call's (up to float
    rounding: convolutions sum in another order for another batch size).
    Per-image edits of several rows belong to their latents as a whole: applied in one go."""
    n = int(ws.shape[0])
    chunk = chunk or images_per_chunk(G, passes=3)
    if n <= chunk or any(e.rows() > 1 for e in edits):
        parts = [(0, n)]
    else:
        parts = [(start, min(start + chunk, n)) for start in range(0, n, chunk)]
    results = []
    for start, stop in parts:
        if progress is not None:
            progress(start, n)
        results.append(apply_edits(G, ws[start:stop], edits, strength, threshold,
                                   transfer=transfer))
    if progress is not None:
        progress(n, n)
    if len(results) == 1:
        return results[0]
    masks = [[_stacked(list(layer)) for layer in zip(*(r.masks[e] for r in results))]
             for e in range(len(edits))]
    original = _stacked([r.original for r in results])
    return ApplyResult(torch.cat([r.edited for r in results]), original, masks,
                       results[0].transferred)


def _stacked(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The chunks' tensors as one batch (None where the chunks have none)."""
    present = [p for p in parts if p is not None]
    return torch.cat(present) if len(present) == len(parts) else None


@torch.no_grad()
def strength_sweep(G: Generator, ws: torch.Tensor, edit: Edit, strengths: Sequence[float],
                   threshold: float | None = None) -> torch.Tensor:
    """Images [S, B, 3, H, W] at each strength (0 gives the original image exactly)."""
    return torch.stack([apply_edits(G, ws, [edit], s, threshold).edited for s in strengths])
