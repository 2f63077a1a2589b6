"""Region pruning: keep the fewest segments (and layers) that still carry the edit.

Why (a departure from the paper, measured on the demo world v2): the CLIP rewards a little for
changing things the prompt does not name (for "a cyan background" an empty cyan picture scores
above the scene with its objects in 62 of 64 renders), and a small segment costs almost nothing
under the area term, so joint training switches object segments on beside the background.
Taken one at a time, though, such a segment carries a small share of the edit's CLIP gain,
while the region the prompt names carries most of it. So, part-way through training, units
(a segment at every layer, or optionally a layer for every segment) are removed greedily, the
least useful first, for as long as the edit keeps at least ``1 - tolerance`` of its CLIP gain
over the unedited image; the removed ones are switched off for the rest of training, and the
direction and the kept weights then adapt to the smaller region.

How the candidates are judged: by the CLIP loss the edit trains with, or, when a neutral
prompt says what the region shows now ("a green background"), by the directional CLIP loss
(does the change point from the neutral text to the prompt?), whatever loss trains the edit
(``TrainConfig.prune_directional``). Why: at the pruning step a background recolour is only
part-way (it needs a long move in W+), while an object tints at once, so under the global loss
the objects could carry more of the gain and the background was pruned ("a purple
background" gave a purple square). The directional loss is scale-free: a small change that
points the right way beats a larger one that points elsewhere. Measured on the demo world
(48 cases): see the README's Evaluation.
"""
from __future__ import annotations

from typing import Callable

import torch

# gate [P, L, K] (1 = (layer, segment) may be used) -> CLIP loss per selector row [P], or per
# row and judged image [P, N] (a per-prompt edit: see ``image_keep``)
GateScore = Callable[[torch.Tensor], torch.Tensor]
# With per-image losses, only the images whose own gain is at least this share of the row's
# mean gain are guarded by ``image_keep``: a picture the edit barely moves (one without what
# the prompt names) must not keep a unit for the sake of its noise.
GUARDED_GAIN_SHARE = 0.5


def prune_selection(active: torch.Tensor, score: GateScore, tolerance: float,
                    layers: bool = False, image_keep: float = 0.0) -> torch.Tensor:
    """The gate [P, L, K] of what is kept, row by row (rows are independent images or prompts).
    ``active`` [P, L, K]: the (layer, segment) weights selected now; the others are off. Units
    are whole segments, and with ``layers`` whole layers too. A row whose edit has no CLIP gain
    yet keeps its selection: there is nothing to measure. Of equally useful units the first
    (segments in order, then layers) goes first, so a selection always prunes the same way.

    When ``score`` gives a loss per judged image ([P, N]; a row's loss is their mean) and
    ``image_keep`` > 0, a unit also stays if removing it leaves any guarded image (see
    ``GUARDED_GAIN_SHARE``) with less than ``image_keep`` of its own gain. Why: a per-prompt
    edit must work on every scene, not on average; the catalogue splits the background into
    clusters by colour, and with the mean alone "an orange background" dropped the cluster
    of a third of the pictures (the edit then selected nothing there)."""
    keep = active.clone()
    none_all = score(torch.zeros_like(keep, dtype=torch.float32))
    full_all = score(keep.float())
    none, full = _row_loss(none_all), _row_loss(full_all)
    # the highest loss a pruned edit may have; written from ``full`` so that at tolerance 0 a
    # unit worth exactly nothing goes (none - (1 - 0) * (none - full) rounded below full)
    floor = full + tolerance * (none - full)
    can_prune = full < none
    guard = _image_guard(none_all, full_all, image_keep)
    rows = torch.arange(keep.shape[0], device=keep.device)
    units: list[tuple[int | None, int | None]] = [(None, k) for k in range(keep.shape[2])]
    if layers:
        units += [(i, None) for i in range(keep.shape[1])]
    while True:
        best_loss = torch.full_like(full, float("inf"))
        best_unit = torch.full_like(rows, -1)
        for u, (layer, seg) in enumerate(units):
            trial = keep.clone()
            if seg is not None:
                trial[:, :, seg] = False
            else:
                trial[:, layer, :] = False
            candidate = (trial != keep).flatten(1).any(1) & trial.flatten(1).any(1) & can_prune
            if not bool(candidate.any()):
                continue
            trial = torch.where(candidate[:, None, None], trial, keep)
            loss_all = score(trial.float())
            loss = _row_loss(loss_all)
            better = candidate & (loss <= floor) & (loss < best_loss) & guard(loss_all)
            best_loss = torch.where(better, loss, best_loss)
            best_unit = torch.where(better, torch.full_like(best_unit, u), best_unit)
        if not bool((best_unit >= 0).any()):
            return keep.float()
        for row in rows[best_unit >= 0].tolist():
            layer, seg = units[int(best_unit[row])]
            if seg is not None:
                keep[row, :, seg] = False
            else:
                keep[row, layer, :] = False


def _row_loss(loss: torch.Tensor) -> torch.Tensor:
    return loss.mean(1) if loss.dim() == 2 else loss


def _image_guard(none: torch.Tensor, full: torch.Tensor, image_keep: float
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """loss [P, N] -> [P]: whether every guarded image keeps ``image_keep`` of its own gain
    (all True without per-image losses or with ``image_keep`` 0)."""
    if none.dim() != 2 or image_keep <= 0:
        return lambda loss: torch.ones(none.shape[0], dtype=torch.bool, device=none.device)
    gains = none - full
    guarded = (gains > 0) & (gains >= GUARDED_GAIN_SHARE * gains.mean(1, keepdim=True))
    image_floor = none - image_keep * gains
    return lambda loss: ((loss <= image_floor) | ~guarded).all(1)
