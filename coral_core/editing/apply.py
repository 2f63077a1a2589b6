"""Applying learned edits to latents: strength, mask threshold, stacking, strength sweeps.

Apply = one original pass (its features drive CAN masks and SS segments) + one blended pass in
which every edit blends over the ones before it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..validate import MAX_STRENGTH, finite
from ..errors import InputError
from ..stylegan import Generator
from .blend import stacked_synthesis
from .edit import Edit
from .memory import images_per_chunk
from .selectors import composite

if TYPE_CHECKING:
    from ..clip_model import CoralClip


@dataclass
class SceneVerdict:
    """Which images a per-prompt edit left alone, and why (row indices of the batch)."""
    already: list[int] = field(default_factory=list)   # already show what it names
    absent: list[int] = field(default_factory=list)    # lack what it names
    unchecked: str = ""                                # why the scenes were not checked
    empty: list[int] = field(default_factory=list)     # the edit selects no region there
    far: list[int] = field(default_factory=list)       # the edit overshot there: undone
    short: list[int] = field(default_factory=list)     # the edit barely acted there: undone
    start_scores: list[float] = field(default_factory=list, repr=False)  # CLIP, before

    def offset(self, start: int) -> "SceneVerdict":
        def moved(rows: list[int]) -> list[int]:
            return [i + start for i in rows]
        return SceneVerdict(moved(self.already), moved(self.absent), self.unchecked,
                            moved(self.empty), moved(self.far), moved(self.short))

    def left(self) -> list[int]:
        """The rows the edit leaves exactly as they were."""
        return sorted(set(self.absent + self.already + self.far + self.short))


@dataclass
class ApplyResult:
    edited: torch.Tensor                          # [B, 3, H, W] in [-1, 1]
    original: torch.Tensor | None                 # [B, 3, H, W] (None if not requested)
    masks: list[list[torch.Tensor | None]]        # per edit, per conv layer
    transferred: list[str] = field(default_factory=list)  # per-image edits used on other latents
    # per edit laid (each clause of a chained edit counts): None for a per-image edit
    scenes: list[SceneVerdict | None] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # per edit laid, as ``scenes``

    def selected_layers(self, threshold: float = 0.5) -> list[int]:
        """The conv layers (1-based) whose mask reaches ``threshold`` on some image, over
        every edit laid (a held edit and the one that trained its short images again free
        both count)."""
        return sorted({i + 1 for masks in self.masks for i, m in enumerate(masks)
                       if m is not None and float(m.max()) >= threshold})

    def all_warnings(self, edits: Sequence[Edit]) -> list[str]:
        """What a user was told, training and apply together: each edit's training warnings
        (kept in its file), then this apply's."""
        return [w for e in edits for w in (e.info.get("warnings") or [])] + self.warnings()

    def warnings(self) -> list[str]:
        """What the scene check did, in words a user can act on."""
        out = []
        for prompt, v in zip(self.prompts, self.scenes):
            if v is None:
                continue
            if v.unchecked:
                out.append(f"edit {prompt!r}: scenes not checked ({v.unchecked})")
            if v.absent:
                out.append(f"edit {prompt!r}: image(s) {_rows(v.absent)} seem to lack what "
                           "it names, so they are left unchanged (switch the scene check off "
                           "to edit them anyway)")
            if v.already:
                out.append(f"edit {prompt!r}: image(s) {_rows(v.already)} already match it "
                           "as well as the generator's best samples do, so they are left "
                           "unchanged")
            if v.empty:
                out.append(f"edit {prompt!r}: selects no region in image(s) {_rows(v.empty)}, "
                           "which stay as they were (a per-prompt edit's regions come from "
                           "the scenes it was trained on; train a per-image edit for these)")
            if v.far:
                out.append(f"edit {prompt!r}: moved the CLIP far past the generator's own best "
                           f"pictures of it in image(s) {_rows(v.far)}, so they are left "
                           "unchanged: the CLIP reacts to words that name nothing this "
                           "generator draws there; describe something it draws")
            if v.short:
                out.append(f"edit {prompt!r}: got under half way to the generator's best "
                           f"pictures of it in image(s) {_rows(v.short)}, so they are left "
                           "unchanged: the change it learned does not take there (train a "
                           "per-image edit for these)")
        return out


@torch.no_grad()
def apply_edits(G: Generator, ws: torch.Tensor, edits: Sequence[Edit],
                strength: float | Sequence[float] = 1.0, threshold: float | None = None,
                noise_mode: str = "const", return_original: bool = True,
                transfer: bool = False, clip: CoralClip | None = None) -> ApplyResult:
    """Edited (and original) images for W+ codes ``ws``, plus every edit's per-layer masks.

    With ``clip``, a per-prompt edit that carries a scene check (fit.SceneCheck) leaves alone
    the images that lack what it names or already show it (``ApplyResult.scenes`` says
    which); without it every image is edited.
    Without ``return_original`` the plain pass only runs as far as the masks need features
    (the SS catalogue layer, or every layer for CAN), and the blended pass reuses it up to the
    first selected layer: the cheapest way to get the edited image.
    """
    strengths = _checked_strengths(edits, strength, threshold)
    if len(edits) == 1 and edits[0].then is not None:
        return _lay_clauses(G, ws, edits[0], strength, threshold, noise_mode, transfer, clip)
    ws = G.check_ws(ws.to(G.w_avg.device))
    laid = [(link, s) for e, s in zip(edits, strengths) for link in e.chain()]
    edits, strengths = [link for link, _ in laid], [s for _, s in laid]
    transferred = _ready(G, ws, edits, transfer)
    noise = G.make_noise(ws.shape[0], noise_mode)
    original = None
    checks = clip is not None and any(e.scene_check is not None for e in edits)
    if return_original or checks or any(e.composite for e in edits):
        original, feats = G.synthesize_with_features(ws, noise=noise)
    else:
        feats = G.features_up_to(ws, noise, max(e.feature_layers_needed(G) for e in edits))
    scenes = [_scene_verdict(e, clip if checks else None, original) for e in edits]
    pairs, all_masks, regions = [], [], []
    for e, s, verdict in zip(edits, strengths, scenes):
        masks = e.masks(G, feats, threshold)
        if s != 0:  # strength 0 is the identity exactly, not just up to rounding
            pairs.append((_kept_rows(e.delta(ws) * s, verdict, ws.shape[0]), masks))
            regions.append(e.region(G, feats, original))
            if verdict is not None:
                left = set(verdict.left())
                verdict.empty = [i for i in _selects_nothing(masks, regions[-1], ws.shape[0])
                                 if i not in left]
        all_masks.append(masks)
    edited = stacked_synthesis(G, ws, pairs, noise, original_features=feats)
    if original is not None:
        untouched = sorted(set(_left_by_every_edit(scenes, strengths))
                           | set(_rows_without_direction(pairs, ws.shape[0])))
        edited = _finished(edited, original, regions, untouched)
        if checks and len(edits) == 1 and clip is not None:
            _undo_off_target(edits[0], clip, scenes[0], strengths[0], original, edited)
    return ApplyResult(edited, original if return_original else None, all_masks, transferred,
                       scenes, [e.prompt for e in edits])


def _checked_strengths(edits: Sequence[Edit], strength: float | Sequence[float],
                       threshold: float | None) -> list[float]:
    """One finite strength per edit (a single value is every edit's), the threshold in [0, 1]."""
    if not edits:
        raise InputError("no edit given")
    for value in ([strength] if isinstance(strength, (int, float)) else list(strength)):
        finite("strength", value, -MAX_STRENGTH, MAX_STRENGTH)
    if threshold is not None:
        finite("threshold", threshold, 0.0, 1.0)
    strengths = [float(strength)] * len(edits) if isinstance(strength, (int, float)) \
        else [float(s) for s in strength]
    if len(strengths) != len(edits):
        raise InputError(f"{len(strengths)} strengths for {len(edits)} edits")
    return strengths


def _ready(G: Generator, ws: torch.Tensor, edits: Sequence[Edit], transfer: bool) -> list[str]:
    """Check every edit against the generator and latents and move it to their device;
    return the per-image edits being transferred to other latents."""
    transferred = []
    for e in edits:
        e.check_generator(G)
        e.check_batch(ws.shape[0])
        if e.check_latents(ws, transfer):
            transferred.append(e.prompt)
        e.to(ws.device)
    return transferred


def _kept_rows(delta: torch.Tensor, verdict: SceneVerdict | None, batch: int) -> torch.Tensor:
    """The direction (one row, or one per image) for ``batch`` images, 0 on the rows the
    scene check leaves alone."""
    if verdict is None or not verdict.left():
        return delta
    keep = torch.ones(batch, 1, 1, device=delta.device, dtype=delta.dtype)
    keep[verdict.left()] = 0.0
    return delta * keep


def _finished(edited: torch.Tensor, original: torch.Tensor, regions: list,
              untouched: list[int]) -> torch.Tensor:
    """The rows no edit acts on exactly as they were (not up to the blend's rounding), then
    the SS composite over the union of the edits' regions."""
    if untouched:
        edited[untouched] = original[untouched]
    if regions and all(r is not None for r in regions):
        edited = composite(edited, original, torch.stack(regions).amax(0))
    return edited


def _lay_clauses(G: Generator, ws: torch.Tensor, edit: Edit,
                 strength: float | Sequence[float], threshold: float | None, noise_mode: str,
                 transfer: bool, clip: CoralClip | None) -> ApplyResult:
    """A prompt that joined two things: each clause's edit applied alone, and each pixel
    given the change of the last clause whose region holds it. Why not one stacked pass: a
    coarse layer's mask of the second clause (a background) reaches over the first clause's
    object, and its features overwrote that object's new colour (session 15's first try)."""
    s = strength if isinstance(strength, (int, float)) else list(strength)[0]
    results = []
    for link in edit.chain():
        alone = replace(link, then=None)
        results.append(apply_edits(G, ws, [alone], s, threshold, noise_mode, True, transfer,
                                   clip))
    original = results[0].original
    assert original is not None
    edited = original.clone()
    for res in results:
        change = res.edited - original
        moved = change.abs().amax(1, keepdim=True) > 0
        edited = torch.where(moved.expand_as(edited), res.edited, edited)
    masks, prompts, scenes = _one_per_prompt(results)
    return ApplyResult(edited, original, masks, results[0].transferred, scenes, prompts)


def _rows_without_direction(pairs: list, batch: int) -> list[int]:
    """The images no edit moves in W+ (every direction row 0: an image the prompt fit check
    left alone, a scene check's verdict): given back exactly, since a blend of identical
    features can still differ in the last bit (and a chain's later link must not cover an
    earlier link's change with such a row)."""
    return [i for i in range(batch)
            if not any(bool(delta[i if delta.shape[0] > 1 else 0].any()) for delta, _ in pairs)]


def _one_per_prompt(results: list[ApplyResult]
                    ) -> tuple[list[list[torch.Tensor | None]], list[str], list]:
    """Masks, prompts and scene verdicts per thing the prompt names. Links of one prompt (a
    held edit and the free one trained again for the images it fell short on: trainer
    ``free_when_short``) act on different images, so their masks are merged (the larger per
    pixel) and they count as one clause."""
    masks: list[list[torch.Tensor | None]] = []
    prompts: list[str] = []
    scenes: list = []
    for res in results:
        for m, p, v in zip(res.masks, res.prompts, res.scenes):
            if prompts and prompts[-1] == p:
                masks[-1] = [a if b is None else b if a is None else torch.maximum(a, b)
                             for a, b in zip(masks[-1], m)]
                continue
            masks.append(list(m))
            prompts.append(p)
            scenes.append(v)
    return masks, prompts, scenes


def _scene_verdict(edit: Edit, clip: CoralClip | None, original: torch.Tensor | None
                   ) -> SceneVerdict | None:
    """Which images a per-prompt ``edit`` should leave alone (None: a per-image edit, checked
    when it was trained); the scene check runs only with ``clip``."""
    if edit.latents is not None:
        return None
    check = edit.scene_check
    if check is None or clip is None or original is None:
        return SceneVerdict()
    if clip.fingerprint() != edit.scene_check_clip:
        return SceneVerdict(unchecked="the edit was trained with another CLIP "
                                      f"({edit.clip_model_id or 'unknown'}); give that CLIP")
    embeddings = clip.encode_image(original)
    already = check.already(embeddings)
    absent = check.absent(embeddings)
    return SceneVerdict([i for i, a in enumerate(already) if a],
                        [i for i, a in enumerate(absent) if a],
                        start_scores=check.scores(embeddings).tolist())


def _undo_off_target(edit: Edit, clip: CoralClip, verdict: SceneVerdict | None,
                     strength: float, original: torch.Tensor, edited: torch.Tensor) -> None:
    """Put back, in place, the scenes on which a per-prompt edit moved the CLIP too far or
    too little (fit.SceneCheck.off_target, the rule per-image edits meet after training),
    and note them in ``verdict``. Judged at the strength asked for (the reach is divided by
    it); not judged for a reversed edit (strength <= 0), nor in a stack of several edits,
    where no one edit's share of the change can be read."""
    check = edit.scene_check
    if check is None or verdict is None or verdict.unchecked or strength <= 0 \
            or not verdict.start_scores:
        return
    skip = set(verdict.left() + verdict.empty)
    moved = (edited - original).flatten(1).abs().amax(1) > EIGHT_BIT_STEP / 2
    judged = [i for i in range(edited.shape[0])  # a scene it did not change needs no verdict
              if i not in skip and bool(moved[i])]
    if not judged:
        return
    verdict.far, verdict.short = check.off_target(verdict.start_scores,
                                                  clip.encode_image(edited), judged, strength)
    undo = verdict.far + verdict.short
    if undo:
        edited[undo] = original[undo]


EMPTY_MASK = 1e-3  # a mask this weak changes no 8-bit pixel
EIGHT_BIT_STEP = 2 / 255  # one step of an 8-bit pixel, in the images' [-1, 1]


def _selects_nothing(masks: list[torch.Tensor | None], region: torch.Tensor | None,
                     batch: int) -> list[int]:
    """Rows on which the edit acts nowhere: its final region (or, without one, every layer's
    mask) is empty."""
    if region is not None:
        peak = region.flatten(1).amax(1)
    else:
        peaks = [m.flatten(1).amax(1) for m in masks if m is not None]
        peak = torch.stack(peaks).amax(0) if peaks else torch.zeros(batch)
    return [i for i, p in enumerate(peak.expand(batch).tolist()) if p <= EMPTY_MASK]


def _left_by_every_edit(scenes: list[SceneVerdict | None], strengths: list[float]
                        ) -> list[int]:
    """The rows that no edit of nonzero strength acts on."""
    active = [v for v, s in zip(scenes, strengths) if s != 0]
    if not active or any(v is None for v in active):
        return []
    left = [set(v.left()) for v in active if v is not None]
    return sorted(set.intersection(*left))


def _rows(rows: list[int]) -> str:
    shown = ", ".join(str(i) for i in rows[:12])
    return shown + (f" and {len(rows) - 12} more" if len(rows) > 12 else "")


# (latents done, latents in all); may raise to cancel
ApplyProgress = Callable[[int, int], None]


def apply_in_chunks(G: Generator, ws: torch.Tensor, edits: Sequence[Edit],
                    strength: float | Sequence[float] = 1.0, threshold: float | None = None,
                    transfer: bool = False, chunk: int | None = None,
                    progress: ApplyProgress | None = None,
                    clip: CoralClip | None = None) -> ApplyResult:
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
                                   transfer=transfer, clip=clip))
    if progress is not None:
        progress(n, n)
    if len(results) == 1:
        return results[0]
    masks = [[_stacked(list(layer)) for layer in zip(*(r.masks[e] for r in results))]
             for e in range(len(results[0].masks))]
    original = _stacked([r.original for r in results])
    scenes = [_merged([r.scenes[e] for r in results], [start for start, _ in parts])
              for e in range(len(results[0].scenes))]
    return ApplyResult(torch.cat([r.edited for r in results]), original, masks,
                       results[0].transferred, scenes, results[0].prompts)


def _merged(verdicts: list[SceneVerdict | None], starts: list[int]) -> SceneVerdict | None:
    """One edit's chunk verdicts as one, with the chunks' rows counted from the batch start."""
    if all(v is None for v in verdicts):
        return None
    merged = SceneVerdict()
    for v, start in zip(verdicts, starts):
        if v is not None:
            shifted = v.offset(start)
            merged.already += shifted.already
            merged.absent += shifted.absent
            merged.empty += shifted.empty
            merged.far += shifted.far
            merged.short += shifted.short
            merged.unchecked = merged.unchecked or v.unchecked
    return merged


def _stacked(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The chunks' tensors as one batch (None where the chunks have none)."""
    present = [p for p in parts if p is not None]
    return torch.cat(present) if len(present) == len(parts) else None


@torch.no_grad()
def strength_sweep(G: Generator, ws: torch.Tensor, edit: Edit, strengths: Sequence[float],
                   threshold: float | None = None) -> torch.Tensor:
    """Images [S, B, 3, H, W] at each strength (0 gives the original image exactly)."""
    return torch.stack([apply_edits(G, ws, [edit], s, threshold).edited for s in strengths])
