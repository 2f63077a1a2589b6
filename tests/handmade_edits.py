"""Edits built by hand on a generator, with known directions and selections, in milliseconds.

Training an edit takes seconds to minutes; the tests of what an edit file holds and of how
apply lays edits over images need edits whose every number is chosen, not learned.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from coral_core.editing.catalogue import SegmentCatalogue
from coral_core.editing.directions import GlobalDirection, LatentMapper
from coral_core.editing.edit import Edit
from coral_core.editing.fit import SceneCheck
from coral_core.editing.selectors import AttentionSelector, SegmentSelector
from coral_core.stylegan import Generator


def catalogue_for(G: Generator, k: int = 3, layer: int = 2, seed: int = 0,
                  pieces: int = 0) -> SegmentCatalogue:
    """A catalogue of ``k`` random unit centres over conv layer ``layer``'s features."""
    channels = G.conv_layers[layer - 1].out_channels
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, channels, generator=gen), dim=1)
    return SegmentCatalogue(centres, layer, G.fingerprint(), pieces)


def scene_check(dim: int, parts: int = 2, seed: int = 0) -> SceneCheck:
    """A scene check of random embeddings of width ``dim`` with ``parts`` prompt parts."""
    gen = torch.Generator().manual_seed(seed)
    return SceneCheck(F.normalize(torch.randn(dim, generator=gen), dim=0), 0.3, 0.1,
                      F.normalize(torch.randn(parts, dim, generator=gen), dim=1),
                      torch.full((parts,), 0.25), torch.full((parts,), 0.05),
                      torch.arange(parts, dtype=torch.float32) % 2,
                      torch.zeros(parts, parts))


def ss_edit(G: Generator, prompt: str = "a red circle", rows: int = 1, k: int = 3,
            weights: torch.Tensor | None = None, size: float = 1.0, seed: int = 0,
            **fields: Any) -> Edit:
    """A segment-selection edit with a global direction of norm ``size`` per W+ entry (in the
    generator's own units) and, per layer and segment, the selector weight ``weights``
    [rows, L, k] (default: every weight 1; a weight of 0 or 1 is exact: logits of -200 or
    +200)."""
    layers = len(G.conv_layers)
    gen = torch.Generator().manual_seed(seed)
    direction = GlobalDirection(G.num_ws, G.w_dim, rows=rows)
    with torch.no_grad():
        delta = torch.randn(rows, G.num_ws, G.w_dim, generator=gen)
        direction.delta.copy_(F.normalize(delta, dim=-1) * size)
    selector = SegmentSelector(layers, k, rows)
    with torch.no_grad():
        if weights is None:
            selector.logits.fill_(200.0)
        else:
            logits = torch.logit(weights.clamp(1e-6, 1 - 1e-6))  # 0 and 1 exactly, below
            selector.logits.copy_(logits.where((weights > 0) & (weights < 1),
                                               200.0 * weights.sign() - 200.0 * (weights == 0)))
    if "catalogue" not in fields and "segments" not in fields:
        fields["catalogue"] = catalogue_for(G, k)
    return Edit("ss", "global", "per_image" if rows > 1 else "per_prompt", prompt, "",
                direction.requires_grad_(False), selector.requires_grad_(False),
                G.fingerprint(), G.img_resolution, G.num_ws, G.w_dim, **fields)


def can_edit(G: Generator, prompt: str = "a red circle", mapper: bool = False, seed: int = 0,
             **fields: Any) -> Edit:
    """An attention edit (random heads) with a global direction or a latent mapper."""
    torch.manual_seed(seed)
    direction: GlobalDirection | LatentMapper = (
        LatentMapper(G.num_ws, G.w_dim) if mapper else GlobalDirection(G.num_ws, G.w_dim,
                                                                       init_std=0.5, seed=seed))
    selector = AttentionSelector.for_generator(G)
    return Edit("can", "mapper" if mapper else "global", "per_prompt", prompt, "",
                direction.requires_grad_(False), selector.requires_grad_(False),
                G.fingerprint(), G.img_resolution, G.num_ws, G.w_dim, **fields)
