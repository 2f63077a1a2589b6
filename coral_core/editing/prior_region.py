"""Where the direction prior changes the picture: a region of its own for changes of shape.

Why (a departure from the paper, ``TrainConfig.prior_region``; measured on the face world,
docs/method.md "The prior's region"): a per-image SS edit selects among the segments of the
*unedited* picture. A change of shape needs a region that no segment outlines: long hair grows
over part of the background, a smile widens the mouth over the skin. With whole segments the
edit had to take all of the background or none of it, and the region contest (one large
region wins) chose neither; held to the prior, 7 of 8 hair-style edits and 7 of 7 smiles were
left unchanged. The prior's start, ``G(w + start)``, already draws the change: where it
differs visibly from ``G(w)`` is where the generator's own direction of the prompt acts.

So each segment piece is split in two, its cells that the prior's start changes and the rest
(a piece it changes mostly goes whole to the changed half), and the rest start with a small
mask weight (``REST_WEIGHT``): the masks begin where the
prior acts and the CLIP, area and region choice decide from there. Nothing here reads the
truth: the threshold is the one that best splits the picture's own change magnitudes
(Otsu's), never below one visible grey level.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .outcome import VISIBLE_STEP
from .selectors import EDGE_BAND

#: The mask weight the split pieces the prior leaves unchanged start at (the others start at
#: ``TrainConfig.mask_init``). 0.1 was measured against no preference (all at 0.5) on faces
#: 242-251: hair style 3 of 8 and smiles 4 of 7 against 1 and 2 (docs/history.md, session 28).
REST_WEIGHT = 0.1
OTSU_BINS = 64  # histogram bins of the change magnitudes (a 64-px picture has 4,096 pixels)


def otsu_threshold(values: torch.Tensor, bins: int = OTSU_BINS) -> float:
    """The threshold that best splits ``values`` in two (the largest between-class variance
    of their histogram; Otsu 1979). All values equal: that value (nothing lies above it)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        return hi
    hist = torch.histc(values.double(), bins, lo, hi)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    below = hist.cumsum(0)
    above = below[-1] - below
    below_sum = (hist * centres).cumsum(0)
    mean_below = below_sum / below.clamp_min(1)
    mean_above = (below_sum[-1] - below_sum) / above.clamp_min(1)
    between = below * above * (mean_below - mean_above).square()
    return float(edges[int(between.argmax()) + 1])


def opening_width(side: int) -> int:
    """The odd window (px) of the opening that removes thin changes: EDGE_BAND of the
    picture's side, at least 3 px (3 at 64 px)."""
    width = max(3, round(EDGE_BAND * side))
    return width if width % 2 else width + 1


def visible_change(moved: torch.Tensor, image: torch.Tensor, share: float = 1.0
                   ) -> torch.Tensor:
    """[B, 1, H, W]: 1 where ``moved`` differs from ``image`` (both [B, 3, H, W] in the
    generator's [-1, 1]) by more than ``share`` of the picture's Otsu threshold of its change
    magnitudes (the largest channel difference per pixel, after a grey-level opening), and by
    at least one visible grey level.

    Why the opening (a minimum then a maximum over ``opening_width``): the prior's start
    also moves every outline by a pixel or so, a thin line of large change round the head
    and hair. Left in, it set Otsu's threshold above a whole background's milder change ("a
    blue background" then split off only the head's outline); a change thinner than the
    composite's edge band (EDGE_BAND) is an edge's jitter, not a region."""
    change, otsu = _opened_change(moved, image)
    return _past(change, otsu, share)


def _opened_change(moved: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The change magnitude [B, 1, H, W] after the opening (``visible_change``), and each
    picture's Otsu threshold of it."""
    change = (moved.float() - image.float()).abs().amax(1, keepdim=True)
    width = opening_width(change.shape[-1])
    pad = width // 2
    change = -F.max_pool2d(-change, width, stride=1, padding=pad)
    change = F.max_pool2d(change, width, stride=1, padding=pad)
    return change, [otsu_threshold(c.flatten()) for c in change]


def _past(change: torch.Tensor, otsu: list[float], share: float) -> torch.Tensor:
    """1 where ``change`` exceeds ``share`` of its picture's threshold and one visible grey
    level."""
    thresholds = [max(share * t, VISIBLE_STEP) for t in otsu]
    t = torch.tensor(thresholds, dtype=change.dtype, device=change.device)[:, None, None, None]
    return (change > t).to(change.dtype)


def changed_cells(changed: torch.Tensor, resolution: int) -> torch.Tensor:
    """[B, 1, r, r]: 1 for each segment cell (at the catalogue's ``resolution``) holding any
    changed pixel. Why any, not most: an iris is two or three cells at 32 px, and cells half
    changed at its edge left part of it in the slow half (eye colours 6 of 10 against 9)."""
    return (F.adaptive_max_pool2d(changed, resolution) > 0).to(changed.dtype)


def split_pieces(pieces: torch.Tensor, cells: torch.Tensor,
                 graded: torch.Tensor | None = None) -> torch.Tensor:
    """Segments [B, 2K, r, r]: pieces [B, K, r, r] within the changed ``cells`` [B, 1, r, r],
    then the same pieces outside them. A piece the prior changes mostly (at least half its
    cells in ``graded`` [B, 1, r, r], the cells changed by a lesser share of the threshold;
    ``cells`` when not given) goes wholly to the changed half: the prior acts on that part,
    and a change graded across it (a background's shift, stronger near the head or in the
    middle) split "a blue background" into a ring, or a background into a changed middle and
    an unchanged frame, and left the edit short. Still a partition where the pieces were one;
    a piece wholly on one side leaves an empty twin, which no region choice ever selects."""
    graded = cells if graded is None else graded
    share = (pieces * graded).sum((2, 3)) / pieces.sum((2, 3)).clamp_min(1e-6)  # [B, K]
    mostly = (share >= 0.5).to(pieces.dtype)[..., None, None]
    inside = torch.maximum(pieces * cells, pieces * mostly)
    return torch.cat([inside, pieces - inside], 1)


def split_where_changed(pieces: torch.Tensor, moved: torch.Tensor, image: torch.Tensor,
                        graded_share: float) -> torch.Tensor:
    """``split_pieces`` of ``pieces`` [B, K, r, r] where ``moved`` visibly differs from
    ``image``, the "mostly changed" rule counting the cells changed by ``graded_share`` of
    the threshold; the change and its thresholds are computed once for both."""
    change, otsu = _opened_change(moved, image)
    r = pieces.shape[-1]
    return split_pieces(pieces, changed_cells(_past(change, otsu, 1.0), r),
                        changed_cells(_past(change, otsu, graded_share), r))


def start_weights(k: int, mask_init: float) -> torch.Tensor:
    """[2K]: the starting mask weight of each split piece (``split_pieces``' order)."""
    return torch.cat([torch.full((k,), float(mask_init)), torch.full((k,), REST_WEIGHT)])
