"""One trainer for the four CORAL forms: (SS or CAN) x (global direction or latent mapper).

Per image: the latents are fixed, so the original pass (image, features, segments) is computed
once. Per prompt: fresh latents every step; the original pass runs once per batch without
gradient. Each step is the paper's objective (objective.py); around it the trainer starts the
direction from the prior (prior.py), takes the region choice at ``prune_at`` (region.py),
checks the prompt's fit (fit.py) and saves per-prompt checkpoints (run_record.py). Losses that
become NaN stop the run and the last good edit is returned; cancelling returns the best edit so
far, marked partial.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..clip_model import CoralClip
from ..devices import isolated_rng
from ..errors import CancelledError, InputError
from ..progress import Reporter, counted_phase
from ..stylegan import Generator
from .catalogue import SegmentCatalogue, catalogue_for
from .config import TrainConfig
from .directions import GlobalDirection, LatentMapper
from .edit import Edit
from .fit import MIN_REACH, PromptFit, SceneCheck, off_target_rows, prompt_and_rest
from .locate import named_pieces
from .losses import mask_areas
from .memory import MemoryPlan, memory_plan
from .objective import CoralObjective, StepLoss, layer_masks
from .outcome import fit_info, leave_unchanged, summary_info, user_warnings
from .prior import SampleBank, retrieval_prior, sample_bank_for
from .prior_region import split_where_changed, start_weights
from .region import (CONTEST_MIN_SHARE, RegionJudge, harden_selection, judge_loss,
                     present_segments, prune_region)
from .run_record import resume, run_identity, save_checkpoint
from .selectors import AttentionSelector, SegmentSelector, weighted_region


@dataclass
class TrainResult:
    edit: Edit
    partial: bool
    history: list[dict[str, float]]
    stopped_reason: str = ""
    # a held run whose short images are trained again: its direction offsets and mask logits
    # before those images were zeroed, so one of them can keep the held edit after all
    unzeroed: tuple[torch.Tensor, torch.Tensor | None] | None = None


ProgressInfo = dict[str, Any]
Callback = Callable[[int, int, ProgressInfo], None]
# per prompt: the region choice's extra batches come from seed + this (never a training batch)
PRUNE_SEED_OFFSET = 7919


class _Sampler:
    """Latents for each step: the fixed ones (per image) or fresh ones (per prompt)."""

    def __init__(self, G: Generator, cfg: TrainConfig, latents: torch.Tensor | None) -> None:
        self.G, self.cfg = G, cfg
        self.fixed = latents
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def next(self) -> torch.Tensor:
        if self.fixed is not None:
            return self.fixed
        z = torch.randn(self.cfg.batch, self.G.z_dim, generator=self.gen).to(self.G.w_avg.device)
        with torch.no_grad():
            return self.G.mapping_ws(z, self.cfg.truncation)

    def skip(self, batches: int) -> None:
        """Draw and drop ``batches`` batches, so that a per-prompt run resumed from a
        checkpoint trains on the batches the uninterrupted run would have (without it, it
        repeated the first ones)."""
        if self.fixed is None:
            for _ in range(batches):
                torch.randn(self.cfg.batch, self.G.z_dim, generator=self.gen)


@dataclass
class _Original:
    """One batch's unedited pass: images, the generator's features, and the segments."""
    image: torch.Tensor
    feats: list[torch.Tensor]
    segs: torch.Tensor | None
    source: torch.Tensor | None = None  # CLIP embedding of ``image`` (directional loss only)
    # per prompt (TrainConfig.fit_scenes_only): [B] 1 where the scene check finds the image
    # fits the prompt, 0 where it lacks what the prompt names or already shows it
    fits: torch.Tensor | None = None


@dataclass
class _Run:
    """Everything one run holds, made once by ``_prepare`` and read by every step."""
    G: Generator
    clip: CoralClip
    cfg: TrainConfig
    reporter: Reporter | None
    latents: torch.Tensor | None
    segments: torch.Tensor | None
    catalogue: SegmentCatalogue | None
    direction: GlobalDirection | LatentMapper
    selector: SegmentSelector | AttentionSelector
    opt: torch.optim.Optimizer
    sched: Any
    run_id: str
    start_step: int
    target: torch.Tensor
    objective: CoralObjective
    memory: MemoryPlan
    prune_step: int  # the step of the region choice; -1: none
    sampler: _Sampler
    fit: PromptFit | None = None
    scene_check: SceneCheck | None = None  # per prompt: what a scene must show, for apply
    prior: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    fixed_original: _Original | None = None  # per image: the one batch, computed once
    noise: dict[int, list] = field(default_factory=dict)  # per batch size
    setup_seconds: float = 0.0  # catalogue, sample bank, prior, fit check: before step 1
    # per image: the piece where each image shows what the prompt names (locate.py)
    named: list[int | None] | None = None
    # freed images reopened (TrainConfig.reopen_freed): the step that hardens their pieces
    # again (-1: none pending) and the hook that trains the selector for them alone
    reharden_step: int = -1
    reopened_hook: Any = None
    # the CLIP's reading of one step's picture (_reading): (step, embedding, reach per image)
    reading: tuple[int, torch.Tensor, list[float]] | None = None

    @property
    def last_step(self) -> int:
        return self.start_step if self.fit is not None and self.fit.aimless else self.cfg.steps

    @property
    def uses_composite(self) -> bool:
        return self.cfg.composite and not self.cfg.no_masks and \
            isinstance(self.selector, SegmentSelector)

    def allowed_layers(self) -> list[int]:
        cfg = self.cfg
        return [i for i in range(1, len(self.G.conv_layers) + 1)
                if (cfg.only_layers is None or i in cfg.only_layers)
                and (cfg.max_layer is None or i <= cfg.max_layer)]

    def state(self) -> dict[str, Any]:
        return {"direction": {k: v.detach().clone()
                              for k, v in self.direction.state_dict().items()},
                "selector": {k: v.detach().clone() for k, v in self.selector.state_dict().items()}}

    def load(self, state: dict[str, Any]) -> None:
        self.direction.load_state_dict(state["direction"])
        self.selector.load_state_dict(state["selector"])


@dataclass
class _Progress:
    """What the steps have done so far."""
    history: list[dict[str, float]] = field(default_factory=list)
    best: tuple[float, dict[str, Any]] | None = None
    last_good: dict[str, Any] | None = None
    partial: bool = False
    reason: str = ""
    pruned: dict[str, Any] | None = None
    region_seconds: float = 0.0  # the region choice (contest and pruning), once per edit
    credited_to: int = 0  # steps up to this one were run by the contest's winner (skipped)
    last: StepLoss | None = None
    original: torch.Tensor | None = None


def train_edit(G: Generator, clip: CoralClip, cfg: TrainConfig,
               latents: torch.Tensor | None = None, segments: torch.Tensor | None = None,
               reporter: Reporter | None = None,
               catalogue: SegmentCatalogue | None = None) -> TrainResult:
    """Learn a CORAL edit for ``cfg.prompt``. ``latents`` [B, N, D] fix the images (per image;
    default: seeds from ``cfg.seed``); ``segments`` [B|1, K, H, W] replace the catalogue.
    Seeded by ``cfg.seed`` without touching the caller's global RNG state. A prompt that
    joins two things is learned clause by clause (``TrainConfig.split_clauses``)."""
    cfg.validate(G)
    clauses = _clauses_to_split(cfg)
    if clauses:
        return _train_clauses(G, clip, cfg, clauses, latents, segments, reporter, catalogue)
    result = _train_once(G, clip, cfg, latents, segments, reporter, catalogue)
    short = (result.edit.info.get("prior") or {}).get("short_when_held", [])
    if short and not result.partial:
        return _train_short_rows_free(G, clip, cfg, result, short, latents, segments, reporter,
                                      catalogue)
    return result


def _train_once(G: Generator, clip: CoralClip, cfg: TrainConfig, latents: torch.Tensor | None,
                segments: torch.Tensor | None, reporter: Reporter | None,
                catalogue: SegmentCatalogue | None, covered: list[int] | None = None
                ) -> TrainResult:
    """One training of one prompt. ``covered``: rows another edit of this training makes
    (left unchanged here, never judged or warned about)."""
    with isolated_rng(cfg.seed, G.w_avg.device):
        t0 = time.perf_counter()
        run = _prepare(G, clip, cfg, latents, segments, reporter, catalogue)
        if covered and run.fit is not None:
            run.fit.covered = list(covered)
        run.setup_seconds, t0 = time.perf_counter() - t0, time.perf_counter()
        progress = _Progress()
        try:
            for step in range(run.start_step + 1, run.last_step + 1):
                if not _train_step(run, progress, step):
                    break
        except CancelledError:
            progress.partial, progress.reason = True, f"cancelled after step " \
                f"{len(progress.history)}"
        _restore_after_stop(run, progress)
        return _finish(run, progress, time.perf_counter() - t0)


def _train_short_rows_free(G: Generator, clip: CoralClip, cfg: TrainConfig,
                           held: TrainResult, short: list[int], latents: torch.Tensor | None,
                           segments: torch.Tensor | None, reporter: Reporter | None,
                           catalogue: SegmentCatalogue | None) -> TrainResult:
    """``TrainConfig.free_when_short``: the images whose edit, held to the prior, ended short
    of the bank's best samples are trained again as the defaults train them (same seed, the
    direction free), instead of being left unchanged. When every image fell short, the free
    edit is the edit; otherwise it follows the held one in a chain (``Edit.then``), covering
    only those images, and apply gives each image the change of the edit that made it."""
    if reporter is not None:
        reporter.update(0, cfg.steps, force=True, phase="training again, free",
                        warning=f"image(s) {', '.join(map(str, short))}: held to the prior, "
                                "the edit fell short; training them again without the hold")
    assert held.edit.latents is not None  # a held edit is per image
    covered = [i for i in range(held.edit.latents.shape[0]) if i not in short]
    free = _train_once(G, clip, replace(cfg, along_prior=False), latents, segments, reporter,
                       catalogue, covered)
    held_info = held.edit.info
    tried = {"short": short, "reach": (held_info.get("prompt_fit") or {}).get("reach"),
             "wall_seconds": held_info.get("wall_seconds", 0.0),
             "reach_trace": (held_info.get("prior") or {}).get("reach_trace")}
    info = free.edit.info
    info.setdefault("prior", {})["held_first"] = tried
    info["wall_seconds"] = round(info.get("wall_seconds", 0.0) + tried["wall_seconds"], 2)
    kept = _rows_better_held(held_info.get("prompt_fit") or {}, info.get("prompt_fit") or {},
                             short) if cfg.keep_held_when_better else []
    if kept and held.unzeroed is not None:
        _keep_held_rows(held, free, kept)
        fit = held_info.get("prompt_fit") or {}
        if "unchanged" in fit:
            fit["unchanged"] = [i for i in fit["unchanged"] if i not in kept]
        if kept == short and not covered:  # the free edit is needed nowhere
            held_info.setdefault("prior", {})["held_kept"] = kept
            held_info["prior"]["free_tried"] = {
                "short": short, "reach": (info.get("prompt_fit") or {}).get("reach"),
                "wall_seconds": info.get("wall_seconds", 0.0) - tried["wall_seconds"]}
            held_info["wall_seconds"] = info["wall_seconds"]  # both trainings
            return TrainResult(held.edit, free.partial, held.history + free.history,
                               free.stopped_reason)
        covered = sorted(set(covered) | set(kept))
    if not covered:
        return free
    head = held.edit
    head.then = free.edit
    warnings = list(dict.fromkeys(held_info.get("warnings", []) + info.get("warnings", [])))
    if warnings:
        head.info["warnings"] = warnings
    reach = (held_info.get("prompt_fit") or {}).get("reach")
    free_reach = (info.get("prompt_fit") or {}).get("reach")
    if reach and free_reach:
        head.info["prompt_fit"]["reach"] = [free_reach[i] if i in short and i not in kept
                                            else r for i, r in enumerate(reach)]
    head.info["prior"]["trained_again_free"] = [i for i in short if i not in kept]
    if kept:
        head.info["prior"]["held_kept"] = kept
    head.info["wall_seconds"] = info["wall_seconds"]  # both trainings
    return TrainResult(head, free.partial, held.history + free.history, free.stopped_reason)


def _rows_better_held(held_fit: dict[str, Any], free_fit: dict[str, Any], short: list[int]
                      ) -> list[int]:
    """The images trained again free that keep their held edit after all
    (``TrainConfig.keep_held_when_better``): those whose held edit got at least MIN_REACH of
    the way (it would stand without the second training) and whose free edit either is left
    unchanged (too far, or still short) or loses more of what the prompt does not name than
    it gains of what it names over the held one (``fit.prompt_and_rest``: the fall of
    ``rest`` against the rise of ``gain``, in the same cosine units; no threshold). Why: on
    faces the free edit reaches the prompt by repainting the face or the skin for "long
    hair", "glasses" and beards, where the held edit had drawn the part at 0.86-0.9 of the
    way. Off by default: on fresh faces it kept muddy held recolours instead, a recolour
    showing in the rest too (docs/method.md, "The held edit kept when better")."""
    reach, gain, rest = held_fit.get("reach"), held_fit.get("gain"), held_fit.get("rest")
    free_gain, free_rest = free_fit.get("gain"), free_fit.get("rest")
    if not (reach and gain and rest and free_gain and free_rest):
        return []
    refused = set(free_fit.get("unchanged", []))
    kept = []
    for i in short:
        if i >= len(reach) or reach[i] < MIN_REACH:
            continue
        if i in refused or rest[i] - free_rest[i] > free_gain[i] - gain[i]:
            kept.append(i)
    return kept


@torch.no_grad()
def _keep_held_rows(held: TrainResult, free: TrainResult, rows: list[int]) -> None:
    """Give ``rows`` back their held edit (the offsets and mask logits before they were
    zeroed) and leave them unchanged in the free edit."""
    assert held.unzeroed is not None
    delta, logits = held.unzeroed
    for edit, source in ((held.edit, (delta, logits)), (free.edit, None)):
        direction, selector = edit.direction, edit.selector
        assert isinstance(direction, GlobalDirection)
        for i in rows:
            r = i if direction.delta.shape[0] > 1 else 0
            if source is None:
                direction.delta[r].zero_()
            else:
                direction.delta[r].copy_(source[0][r])
            if isinstance(selector, SegmentSelector):
                s = i if selector.logits.shape[0] > 1 else 0
                if source is None:
                    selector.logits[s].fill_(-30.0)
                elif source[1] is not None:
                    selector.logits[s].copy_(source[1][s])


MAX_SPLIT_CLAUSES = 4  # a prompt joining more things is learned whole (one training per thing)


def _clauses_to_split(cfg: TrainConfig) -> list[str]:
    """The things the prompt joins, when it is learned one edit per thing (else [])."""
    from .fit import prompt_clauses

    clauses = list(dict.fromkeys(prompt_clauses(cfg.prompt)))  # each thing once, in order
    if not cfg.split_clauses or cfg.neutral or not 2 <= len(clauses) <= MAX_SPLIT_CLAUSES:
        return []
    return clauses


def _train_clauses(G: Generator, clip: CoralClip, cfg: TrainConfig, clauses: list[str],
                   latents: torch.Tensor | None, segments: torch.Tensor | None,
                   reporter: Reporter | None, catalogue: SegmentCatalogue | None
                   ) -> TrainResult:
    """One edit per clause, each learned alone on the same images, chained (``Edit.then``)
    so that apply lays the second over the first. A cancel keeps the clauses done so far."""
    results: list[TrainResult] = []
    for i, clause in enumerate(clauses):
        checkpoint = None if cfg.checkpoint is None else \
            Path(cfg.checkpoint).with_name(f"{Path(cfg.checkpoint).name}.clause{i}")
        part = train_edit(G, clip, replace(cfg, prompt=clause, split_clauses=False,
                                           checkpoint=checkpoint),
                          latents, segments, reporter, catalogue)
        results.append(part)
        if part.partial:
            break
    head = results[0].edit
    for before, after in zip(results, results[1:]):
        before.edit.chain()[-1].then = after.edit  # after a clause's own free retraining
    warnings = [w for r in results for w in r.edit.info.get("warnings", [])]
    if warnings:
        head.info["warnings"] = warnings
    head.info["clauses"] = clauses[:len(results)]
    last = results[-1]
    return TrainResult(head, last.partial, [h for r in results for h in r.history],
                       last.stopped_reason)


# --- set-up -----------------------------------------------------------------------------------

def _prepare(G: Generator, clip: CoralClip, cfg: TrainConfig, latents: torch.Tensor | None,
             segments: torch.Tensor | None, reporter: Reporter | None,
             catalogue: SegmentCatalogue | None) -> _Run:
    device = G.w_avg.device
    G.requires_grad_(False)
    clip.model.requires_grad_(False)
    latents = _fixed_latents(G, cfg, latents)
    if segments is not None:
        segments = _check_segments(segments, latents, cfg)
    rows = latents.shape[0] if cfg.mode == "per_image" and latents is not None else 1
    direction = _make_direction(G, cfg, rows).to(device)
    prunes = cfg.prune_tolerance > 0 and not cfg.no_masks and (
        cfg.variant == "can" or segments is None or segments.shape[1] > 1)
    cut = clip.tokens_beyond_context(cfg.prompt)
    if cut and reporter is not None:  # said now, so a user can stop before the run, and again
        reporter.update(0, cfg.steps, force=True, phase="prompt",  # in the edit's warnings
                        warning=f"the CLIP reads {cut[1]} tokens and the prompt has {cut[0]}; "
                                "the rest is ignored")
    if reporter is not None:  # building it (first use of a generator) takes seconds
        reporter.update(0, cfg.steps, force=True, phase="segment catalogue")
    catalogue = _choose_catalogue(G, cfg, segments, catalogue, prunes)
    selector = _make_selector(G, cfg, rows, segments, catalogue).to(device)
    opt = _make_optimiser(cfg, direction, selector)
    run_id = run_identity(cfg, G, clip)
    start_step = resume(cfg, run_id, direction, selector, opt)
    target = clip.encode_text([cfg.prompt])
    text_dir = None
    if cfg.directional:
        text_dir = F.normalize(target - clip.encode_text([cfg.neutral]), dim=-1)
    notes: list[str] = []
    objective = CoralObjective(G, clip, cfg, target, text_dir, _identity_term(cfg, notes, device))
    run = _Run(G=G, clip=clip, cfg=cfg, reporter=reporter, latents=latents, segments=segments,
               catalogue=catalogue, direction=direction, selector=selector, opt=opt,
               sched=_cosine_rampdown(opt, cfg.steps) if cfg.mode == "per_image" else None,
               run_id=run_id, start_step=start_step, target=target, objective=objective,
               memory=memory_plan(cfg, G, device),
               prune_step=max(1, math.ceil(cfg.prune_at * cfg.steps)) if prunes else -1,
               sampler=_Sampler(G, cfg, latents if cfg.mode == "per_image" else None),
               notes=notes)
    run.sampler.skip(start_step)
    _start_from_bank(run)
    if cfg.harden_selection and isinstance(selector, SegmentSelector) and \
            0 < run.prune_step <= start_step:
        selector.logits.requires_grad_(False)  # resumed past the (hardened) region choice
    return run


def _fixed_latents(G: Generator, cfg: TrainConfig, latents: torch.Tensor | None
                   ) -> torch.Tensor | None:
    """The images a per-image edit is trained on (given, or made from the seeds); None for a
    per-prompt edit, which samples its own."""
    if cfg.mode == "per_image" and latents is None:
        z = G.z_from_seeds(range(cfg.seed, cfg.seed + cfg.batch)).to(G.w_avg.device)
        with torch.no_grad():
            latents = G.mapping_ws(z, cfg.truncation)
    if latents is not None:
        latents = G.check_ws(latents.to(G.w_avg.device)).detach()
    if cfg.mode == "per_prompt" and latents is not None:
        raise InputError("per-prompt training samples its own latents; give latents only "
                         "for per-image edits")
    return latents


def _choose_catalogue(G: Generator, cfg: TrainConfig, segments: torch.Tensor | None,
                      catalogue: SegmentCatalogue | None, prunes: bool
                      ) -> SegmentCatalogue | None:
    """The segment catalogue SS selects over (split into connected pieces per image), or the
    clusters CAN's pruning judges; None where given segments replace it."""
    if cfg.variant == "ss" and segments is None:
        if catalogue is None:
            catalogue = catalogue_for(G, cfg.num_segments, cfg.catalogue_dir)
        if cfg.mode == "per_image":  # pieces are per image; per prompt needs shared ids
            catalogue = catalogue.with_pieces(cfg.segment_pieces, cfg.piece_min_cells)
    elif cfg.variant == "can" and prunes:  # CAN prunes over the catalogue's clusters
        catalogue = catalogue or catalogue_for(G, cfg.num_segments, cfg.catalogue_dir)
    return catalogue.with_dissolve(cfg.dissolve_boundaries) if catalogue is not None else None


def _identity_term(cfg: TrainConfig, notes: list[str], device: torch.device
                   ) -> nn.Module | None:
    if cfg.weights.identity <= 0:
        return None
    if cfg.identity_model is None:
        notes.append("identity loss off: no IR-SE50 file (model_ir_se50.pth) was given")
        return None
    from .identity import IdentityLoss, load_irse50

    return IdentityLoss(load_irse50(cfg.identity_model)).to(device)


def _start_from_bank(run: _Run) -> None:
    """Read the sample bank once (building it on first use) for the direction prior of a new
    global direction and the per-image prompt fit check; either may be off."""
    cfg = run.cfg
    wants_prior = isinstance(run.direction, GlobalDirection) and run.start_step == 0
    wants_fit = cfg.check_fit and not cfg.no_masks  # per prompt: the scene check for apply
    bank = None
    if cfg.prior_samples > 0 and (wants_prior or wants_fit):
        bank = sample_bank_for(run.G, run.clip, cfg.prior_samples, cfg.catalogue_dir,
                               _counted_heartbeat(run.reporter, cfg.steps, "sample bank"))
    if wants_prior and bank is not None:
        assert isinstance(run.direction, GlobalDirection)
        held = cfg.along_prior and cfg.mode == "per_image" and not cfg.no_masks and \
            run.prune_step > 0
        form = cfg.prior_form_for(held)
        units = _prior_units(cfg, run.direction, run.target, bank, form)
        run.prior = _start_from_prior(cfg, run.direction, units, form)
        if held:
            _hold_to_prior(run.direction, units, run.prior)
        if cfg.prior_region_for(held) and cfg.variant == "ss" and cfg.mode == "per_image" \
                and run.catalogue is not None and not cfg.no_masks:
            _split_where_the_prior_acts(run)
    _aim_at_named(run, bank)
    if cfg.check_fit:
        drawn = run.fixed_original.image if run.fixed_original is not None else None
        run.fit = _prompt_fit(run.G, run.clip, cfg, run.latents, run.target, bank, drawn)
    if wants_fit and cfg.mode == "per_prompt" and bank is not None:
        run.scene_check = _scene_check(run.clip, cfg, run.target, bank)


def _split_where_the_prior_acts(run: _Run) -> None:
    """Per image SS (``TrainConfig.prior_region``, prior_region.py): the catalogue's pieces
    split where the prior's start changes each picture, the unchanged halves starting with
    low masks. The split segments replace the catalogue (the edit saves them, so apply sees
    the same), hence a new selector and optimiser for their number: this runs once, before
    the first step, when the prior's start is known."""
    G, cfg, latents = run.G, run.cfg, run.latents
    assert latents is not None and run.catalogue is not None and run.prior is not None
    with torch.no_grad():
        noise = G.make_noise(latents.shape[0], "const")
        image, feats = G.synthesize_with_features(latents, noise=noise)
        moved = G.synthesize(latents + run.direction(latents), noise=noise)
        pieces = run.catalogue.segments(feats)
        run.segments = split_where_changed(pieces, moved, image, cfg.prior_region_graded)
    run.catalogue = None
    run.fixed_original = _Original(image, feats, run.segments)  # the first step's, kept
    selector = _make_selector(G, cfg, latents.shape[0], run.segments, None)
    assert isinstance(selector, SegmentSelector)
    with torch.no_grad():
        start = torch.logit(start_weights(pieces.shape[1], cfg.mask_init), eps=1e-4)
        selector.logits.copy_(start.expand_as(selector.logits))
    run.selector = selector.to(latents.device)
    run.opt = _make_optimiser(cfg, run.direction, run.selector)
    run.sched = _cosine_rampdown(run.opt, cfg.steps)
    changed = run.segments[:, :pieces.shape[1]].sum(1)
    run.prior["region_share"] = [round(float(c), 3) for c in changed.flatten(1).mean(1)]


def _aim_at_named(run: _Run, bank: SampleBank | None) -> None:
    """Per image SS with a region choice (``TrainConfig.locate_named``, locate.py): find the
    piece where each image shows what the prompt names, once, on the unedited pictures
    before the first step; it will win the region contest."""
    cfg = run.cfg
    if not (cfg.locate_named and cfg.mode == "per_image" and cfg.contest_steps > 0
            and run.prune_step > 0 and run.start_step == 0 and run.latents is not None
            and isinstance(run.selector, SegmentSelector)):
        return
    latents = run.latents
    original = _original_pass(run, latents, _noise_for(run, latents.shape[0]))
    assert original.segs is not None
    run.named = named_pieces(run.clip, original.image, original.segs, cfg.prompt,
                             CONTEST_MIN_SHARE, bank, cfg.prior_top, cfg.clip_sees_display)


# --- one step ---------------------------------------------------------------------------------

def _train_step(run: _Run, progress: _Progress, step: int) -> bool:
    """One optimisation step; False when the loss is no longer finite (the run stops)."""
    cfg = run.cfg
    if run.reporter is not None:
        run.reporter.check()
    if _credited(run, progress, step):
        return True
    ws = run.sampler.next()
    noise = _noise_for(run, ws.shape[0])
    original = _original_pass(run, ws, noise)
    phase_two = cfg.select_then_edit is not None and step > cfg.select_then_edit * cfg.steps
    if phase_two:
        for p in run.selector.parameters():
            p.requires_grad_(False)
    mix = 0.0 if phase_two else cfg.weights.directional_share
    if step == run.prune_step and original.segs is not None:
        started = time.perf_counter()
        progress.pruned = _choose_region(run, step, ws, noise, original, mix)
        progress.region_seconds = time.perf_counter() - started
        progress.credited_to = _contest_credit(run, step, progress.pruned)
    with run.memory.autocast():
        masks = layer_masks(run.selector, run.G, original.feats, original.segs, cfg,
                            no_masks=cfg.no_masks)
        region = _training_region(run, step, original)
        loss = run.objective(run.direction, ws, masks, noise, original.image, original.source,
                             mix, region=region, recompute=run.memory.recompute,
                             image_weights=original.fits)
    record = {"step": step, **loss.terms}
    if not math.isfinite(record["total"]):
        progress.partial, progress.reason = True, f"loss became {record['total']} at step {step}"
        return False
    progress.last_good = run.state()
    if progress.best is None or record["total"] < progress.best[0]:
        progress.best = (record["total"], progress.last_good)
    progress.history.append(record)
    progress.last, progress.original = loss, original.image
    _trace_reach(run, loss, step)
    if step == run.prune_step and _free_short_rows(run, loss):
        progress.credited_to = 0  # the contest's winner trained held: the freed rows need them
    reopen = _freed_rows_still_short(run, loss, step)
    run.opt.zero_grad(set_to_none=True)
    loss.total.backward()
    _optimiser_step(run)
    if reopen:
        _reopen_freed_rows(run, reopen, step)
    elif step == run.reharden_step:
        _harden_reopened(run)
    if cfg.checkpoint is not None and cfg.mode == "per_prompt" and \
            step % cfg.checkpoint_every == 0:
        save_checkpoint(cfg, run.run_id, run.direction, run.selector, run.opt, step)
    _report(run, step, record, loss)
    return True


def _training_region(run: _Run, step: int, original: _Original) -> torch.Tensor | None:
    """Where this step's composite keeps the edit (None: the paper's blend everywhere): from
    the region choice on, SS's selected segments, or the clusters a CAN edit's pruning kept
    (``can_trains_on_composite``); the region apply will use, so the CLIP sees what the user
    gets and the even-change term reads the change there."""
    if step < run.prune_step or original.segs is None:
        return None
    if run.uses_composite:
        assert isinstance(run.selector, SegmentSelector)
        return run.selector.region(original.segs, run.G.img_resolution, run.allowed_layers(),
                                   original.image)
    if run.cfg.can_trains_on_composite and _composites_at_apply(run):
        assert isinstance(run.selector, AttentionSelector) and \
            run.selector.cluster_gate is not None
        return weighted_region(run.selector.cluster_gate, original.segs,
                               run.G.img_resolution, original.image)
    return None


def _noise_for(run: _Run, batch: int) -> list:
    """The generator's constant noise for ``batch`` images, made once per batch size."""
    if batch not in run.noise:
        run.noise[batch] = run.G.make_noise(batch, "const")
    return run.noise[batch]


def _original_pass(run: _Run, ws: torch.Tensor, noise: list, keep: bool = True) -> _Original:
    """The unedited images, features and segments of this step's latents (per image: computed
    once and kept, unless ``keep`` is off), and their CLIP embedding when the directional loss
    needs it."""
    cached = run.fixed_original if run.cfg.mode == "per_image" and keep else None
    if cached is None:
        with torch.no_grad():
            image, feats = run.G.synthesize_with_features(ws, noise=noise)
            segs = None
            if run.segments is not None:
                segs = run.segments.expand(ws.shape[0], -1, -1, -1)
            elif run.catalogue is not None:  # SS always, CAN when it prunes
                segs = run.catalogue.segments(feats)
        cached = _Original(image, feats, segs)
        if run.cfg.mode == "per_image" and keep:
            run.fixed_original = cached
    if run.cfg.directional and cached.source is None:
        with torch.no_grad():
            cached.source = run.clip.encode_image(cached.image, run.cfg.clip_sees_display)
    if run.cfg.fit_scenes_only and run.scene_check is not None and cached.fits is None:
        cached.fits = _scene_fits(run.clip, run.scene_check, cached)
    return cached


def _scene_fits(clip: CoralClip, check: SceneCheck, original: _Original) -> torch.Tensor:
    """[B]: 1 for each image the per-prompt scene check lets the edit act on, else 0."""
    with torch.no_grad():
        emb = original.source if original.source is not None else \
            clip.encode_image(original.image)
    return torch.tensor(check.acts_on(emb), dtype=torch.float32, device=original.image.device)


def _choose_region(run: _Run, step: int, ws: torch.Tensor, noise: list, original: _Original,
                   mix: float) -> dict[str, Any]:
    """The region choice (region.py) on this step's images, hardened where configured; what
    it removed goes into the edit's record."""
    judge = _region_judge(run, step, ws, noise, original, mix)
    more: list[RegionJudge] = []
    if run.cfg.mode == "per_prompt" and run.cfg.prune_batches > 1:
        # fresh samples from their own seeded stream, so training's batches stay as they were
        sampler = _Sampler(run.G, replace(run.cfg, seed=run.cfg.seed + PRUNE_SEED_OFFSET), None)
        for _ in range(run.cfg.prune_batches - 1):
            extra_ws = sampler.next()
            extra_noise = run.G.make_noise(extra_ws.shape[0], "const")
            extra = _original_pass(run, extra_ws, extra_noise, keep=False)
            more.append(_region_judge(run, step, extra_ws, extra_noise, extra, mix))
    pruned = prune_region(judge, run.selector, run.direction, more)
    if run.cfg.harden_selection and isinstance(run.selector, SegmentSelector):
        # what any judged batch shows is decided (per image there is only the one batch)
        harden_selection(run.selector, torch.cat([j.segs for j in (judge, *more)]))
    return pruned


def _credited(run: _Run, progress: _Progress, step: int) -> bool:
    """Whether the contest's winner already took this step (it is skipped; the learning-rate
    schedule still moves on, so the run ends where a full one would)."""
    if step > progress.credited_to:
        return False
    if run.sched is not None:
        run.sched.step()
    return True


def _contest_credit(run: _Run, step: int, pruned: dict[str, Any]) -> int:
    """The last step the region contest's winner has already taken: its direction trained
    ``contest_steps`` steps on its own region and carries on, so the run skips as many of its
    remaining steps (at most half of them; the learning-rate schedule moves on as if they
    ran). Only when every image's regions contested: an image without a contest
    needs its steps. Why: the contest made CORAL-SS 1.31x a plain optimisation of the same
    steps (issue 32's goal: 1.25x); measured in docs/history.md, session 13."""
    contest = pruned.get("contest")
    rows = int(run.direction.delta.shape[0]) if isinstance(run.direction, GlobalDirection) else 0
    # per image only: a per-prompt run resumes from checkpoints, which keep no credit
    if not run.cfg.credit_contest or run.cfg.mode != "per_image" or not contest or \
            len(contest) < rows:
        return 0
    # at most half of what is left: the steps after the choice also adapt the masks
    return step + min(run.cfg.contest_steps, (run.last_step - step) // 2)


def _region_judge(run: _Run, step: int, ws: torch.Tensor, noise: list, original: _Original,
                  mix: float) -> RegionJudge:
    """What the region choice judges one batch by (region.py)."""
    assert original.segs is not None
    image_loss = judge_loss(run.clip, run.cfg, run.target, original.image, original.source,
                            run.objective.text_direction, mix)
    return RegionJudge(run.G, run.cfg, ws, noise, original.feats, original.segs, image_loss,
                       run.memory, _heartbeat(run.reporter, step, run.cfg.steps,
                                              "region contest and pruning"),
                       original=original.image if run.uses_composite else None,
                       layers=run.allowed_layers(), fits=original.fits, named=run.named)


def _report(run: _Run, step: int, record: dict[str, float], loss: StepLoss) -> None:
    if run.reporter is None:
        return
    preview = loss.edited if (step % max(1, run.cfg.progress_every) == 0
                              or step == run.cfg.steps) else None
    run.reporter.update(step, run.cfg.steps, losses=record, mask_area=mask_areas(loss.masks),
                        preview=preview, masks=loss.masks if preview is not None else None)


# --- the end ----------------------------------------------------------------------------------

def _restore_after_stop(run: _Run, progress: _Progress) -> None:
    """After a cancel: the best state so far; after a NaN: the last good one."""
    if not progress.partial:
        return
    if progress.best is None:
        raise InputError(f"training stopped before any step completed ({progress.reason})")
    cancelled = progress.reason.startswith("cancelled")
    run.load(progress.best[1] if cancelled else (progress.last_good or progress.best[1]))


def _finish(run: _Run, progress: _Progress, wall: float) -> TrainResult:
    """Bake the selection, apply the prompt fit's verdict, and build the edit and its record."""
    cfg, direction, selector = run.cfg, run.direction, run.selector
    if run.reharden_step >= 0:  # stopped before the reopened pieces were hardened again
        _harden_reopened(run)
    if isinstance(selector, SegmentSelector):
        selector.bake_gate()
    retrains = _retrains_short_rows(run, progress)
    unzeroed = None
    if run.fit is not None:
        if progress.last is not None and not run.fit.aimless and cfg.mode == "per_image" \
                and isinstance(direction, GlobalDirection):
            with torch.no_grad():
                edited = run.clip.encode_image(progress.last.edited.detach())
                run.fit.judge_outcome(cfg.prompt, run.target, edited, warn_short=not retrains,
                                      short_below=cfg.free_below if retrains else None)
                start = run.fit.start_embeddings
                if start is not None and start.shape[0] == edited.shape[0]:
                    run.fit.gain, run.fit.rest = prompt_and_rest(run.target, start, edited)
        if retrains and run.fit.short_rows() and isinstance(direction, GlobalDirection):
            unzeroed = (direction.delta.detach().clone(),
                        selector.logits.detach().clone()
                        if isinstance(selector, SegmentSelector) else None)
        leave_unchanged(direction, selector, run.fit)
        if retrains and run.fit.short_rows() and run.prior is not None:
            run.prior["short_when_held"] = run.fit.short_rows()
    edit = _make_edit(run)
    edit.info = summary_info(run.G, edit, cfg, progress.history, wall, progress.partial,
                             progress.reason)
    _record_run(run, progress, edit.info)
    if not progress.partial and cfg.checkpoint is not None:
        Path(cfg.checkpoint).unlink(missing_ok=True)  # the run is complete: nothing to resume
    last = progress.last
    trained_again = bool((run.prior or {}).get("short_when_held"))
    warnings = user_warnings(run.clip, cfg, run.fit, None if last is None or trained_again or
                             progress.original is None else
                             (last.masks, last.edited, progress.original))
    if warnings:
        edit.info["warnings"] = warnings
    if run.fit is not None:
        edit.info["prompt_fit"] = fit_info(run.fit)
        edit.info["prompt_fit"]["unchanged"] = run.fit.unchanged_rows()
    return TrainResult(edit, progress.partial, progress.history, progress.reason, unzeroed)


def _retrains_short_rows(run: _Run, progress: _Progress) -> bool:
    """Whether images that end short of the prompt are trained again free (train_edit):
    a complete per-image run held to the prior, with ``free_when_short``."""
    return bool(run.cfg.free_when_short and not progress.partial and run.prior is not None
                and run.prior.get("held_to_prior"))


def _make_edit(run: _Run) -> Edit:
    cfg, G = run.cfg, run.G
    keeps_catalogue = run.segments is None and (
        cfg.variant == "ss" or getattr(run.selector, "cluster_gate", None) is not None)
    return Edit(variant=cfg.variant, direction_form=cfg.direction, mode=cfg.mode,
                prompt=cfg.prompt, neutral=cfg.neutral,
                direction=run.direction.train(False).requires_grad_(False),
                selector=run.selector.train(False).requires_grad_(False),
                generator_fingerprint=G.fingerprint(), resolution=G.img_resolution,
                num_ws=G.num_ws, w_dim=G.w_dim, clip_model_id=run.clip.model_id,
                catalogue=run.catalogue if keeps_catalogue else None,
                segments=run.segments,
                latents=run.latents if cfg.mode == "per_image" else None,
                max_layer=cfg.max_layer, only_layers=cfg.only_layers, no_masks=cfg.no_masks,
                composite=run.uses_composite or _composites_at_apply(run),
                scene_check=run.scene_check,
                scene_check_clip=run.clip.fingerprint() if run.scene_check is not None else "")


def _composites_at_apply(run: _Run) -> bool:
    """A CAN edit that region pruning limited to some of the catalogue's clusters keeps the
    original pixels outside them when applied (the final composite over its kept clusters,
    Edit.region), as an SS edit does outside its segments."""
    return run.cfg.composite and not run.cfg.no_masks and \
        isinstance(run.selector, AttentionSelector) and run.selector.cluster_gate is not None


def _record_run(run: _Run, progress: _Progress, info: dict[str, Any]) -> None:
    """What the run did besides the steps: memory options, the region choice, the prior,
    resuming, notes."""
    info["memory_options"] = run.memory.as_info()
    # one-time phases apart from the steps: set-up (catalogue, sample bank, prior, fit check)
    # and the region choice; wall_seconds covers the steps including the region choice
    info["setup_seconds"] = round(run.setup_seconds, 2)
    info["region_choice_seconds"] = round(progress.region_seconds, 2)
    if progress.pruned is not None:  # [row, segment] and [row, layer] switched off
        info["region_pruning"] = {"at_step": run.prune_step,
                                  "tolerance": run.cfg.prune_tolerance,
                                  "removed": progress.pruned}
        if progress.credited_to:  # the steps the contest's winner had already taken
            info["region_pruning"]["steps_credited_to_the_contest"] = \
                progress.credited_to - run.prune_step
        if run.named is not None:  # per image: the piece aimed at (locate.py), or None
            info["region_pruning"]["named_pieces"] = run.named
    if run.prior is not None:
        info["prior"] = run.prior
    if run.start_step:
        info["resumed_from_step"] = run.start_step
        info["steps"] = run.start_step + len(progress.history)
    if run.notes:
        info["notes"] = run.notes


# --- helpers ----------------------------------------------------------------------------------

def _check_segments(segments: torch.Tensor, latents: torch.Tensor | None,
                    cfg: TrainConfig) -> torch.Tensor:
    if segments.ndim == 3:
        segments = segments[:, None]
    if segments.ndim != 4:
        raise InputError(f"segments must be [B, K, H, W] masks, got {list(segments.shape)}")
    if cfg.variant != "ss":
        raise InputError("supplied segments are used by segment selection (variant 'ss')")
    if cfg.mode != "per_image":
        raise InputError("supplied segments are per image; use the catalogue for per-prompt "
                         "edits")
    b = latents.shape[0] if latents is not None else cfg.batch
    if segments.shape[0] not in (1, b):
        raise InputError(f"{segments.shape[0]} segment masks for {b} images")
    return segments.to(torch.float32).clamp(0, 1)


def _make_direction(G: Generator, cfg: TrainConfig, rows: int
                    ) -> GlobalDirection | LatentMapper:
    spread = G.w_spread()
    if cfg.direction == "global":
        return GlobalDirection(G.num_ws, G.w_dim, rows, seed=cfg.seed, scale=spread)
    return LatentMapper(G.num_ws, G.w_dim, spread=spread)


def _make_optimiser(cfg: TrainConfig, direction: nn.Module, selector: nn.Module
                    ) -> torch.optim.Optimizer:
    return torch.optim.Adam([{"params": list(direction.parameters()), "lr": cfg.direction_lr()},
                             {"params": list(selector.parameters()), "lr": cfg.selector_lr()}])


def _make_selector(G: Generator, cfg: TrainConfig, rows: int, segments: torch.Tensor | None,
                   catalogue: SegmentCatalogue | None) -> SegmentSelector | AttentionSelector:
    if cfg.variant == "can":
        return AttentionSelector.for_generator(G, init=cfg.mask_init)
    if segments is not None:
        k = int(segments.shape[1])
    else:
        assert catalogue is not None  # made by the trainer whenever no segments are given
        k = catalogue.count
    selector = SegmentSelector(len(G.conv_layers), k, rows, init=cfg.mask_init)
    if cfg.segment_pool not in ("area", "max"):
        raise InputError(f"segment_pool: {cfg.segment_pool!r}; expected 'area' or 'max'")
    selector.pool = cfg.segment_pool
    return selector


def _heartbeat(reporter: Reporter | None, step: int, total: int, phase: str
               ) -> Callable[[], None] | None:
    """What long phases between steps call at every unit of their work (a sample-bank chunk, a
    contest step): the cancel check, plus a progress report naming the phase, so a host's
    progress bar never sits silent for minutes (it did, 343 s, during the contest)."""
    if reporter is None:
        return None

    def beat() -> None:
        reporter.update(step, total, force=True, phase=phase)

    return beat


def _counted_heartbeat(reporter: Reporter | None, total_steps: int, phase: str
                       ) -> Callable[[int, int], None] | None:
    """``_heartbeat`` for a phase that counts its own units (the sample bank's renders): the
    report says how far it is and about how long is left, so a first run on a large generator
    (minutes) is never a silent wait."""
    if reporter is None:
        return None
    started = time.perf_counter()

    def beat(done: int, total: int) -> None:
        phase_now = counted_phase(phase, done, total, time.perf_counter() - started)
        reporter.update(0, total_steps, force=True, phase=phase_now)

    return beat


def _prompt_fit(G: Generator, clip: CoralClip, cfg: TrainConfig,
                latents: torch.Tensor | None, target: torch.Tensor,
                bank: SampleBank | None, drawn: torch.Tensor | None = None
                ) -> PromptFit | None:
    """fit.py's checks for a per-image edit; for a per-prompt edit only "nothing to aim at"
    (its scenes are met at apply time: ``_scene_check``). None without a sample bank.
    ``drawn``: the latents' pictures when already drawn (not drawn again)."""
    if bank is None or cfg.no_masks:
        return None
    from .fit import check_prompt_fit

    if cfg.mode != "per_image" or latents is None:
        no_images = torch.zeros(0, bank.embeddings.shape[1])
        return check_prompt_fit(bank, target, no_images, cfg.prompt, cfg.prior_top,
                                vocabulary=clip.vocabulary)
    with torch.no_grad():
        images = drawn if drawn is not None else \
            G.synthesize(latents, noise=G.make_noise(latents.shape[0], "const"))
        embeddings = clip.encode_image(images)
    return check_prompt_fit(bank, target, embeddings, cfg.prompt, cfg.prior_top,
                            *_prompt_parts_encoded(clip, cfg), vocabulary=clip.vocabulary)


def _prompt_parts_encoded(clip: CoralClip, cfg: TrainConfig
                          ) -> tuple[torch.Tensor | None, list[int]]:
    """The text embeddings of fit.prompt_parts and each part's clause (none with the
    absent check off)."""
    from .fit import prompt_parts

    parts = prompt_parts(cfg.prompt) if cfg.check_absent else []
    with torch.no_grad():
        embeddings = clip.encode_text([p for _, p in parts]) if parts else None
    return embeddings, [c for c, _ in parts]


def _scene_check(clip: CoralClip, cfg: TrainConfig, target: torch.Tensor,
                 bank: SampleBank) -> SceneCheck | None:
    """A per-prompt edit meets its scenes only at apply time: the numbers the prompt fit
    check needs travel in its file (fit.SceneCheck), so apply can leave alone the scenes
    that lack what it names or already show it."""
    if bank.embeddings.shape[0] <= 2 * cfg.prior_top:
        return None
    return SceneCheck.from_bank(bank, target, cfg.prior_top, *_prompt_parts_encoded(clip, cfg))


def _start_from_prior(cfg: TrainConfig, direction: GlobalDirection, units: torch.Tensor,
                      form: str) -> dict[str, Any]:
    """Add the prompt's CLIP-retrieval prior (``_prior_units``) to every row and W+ entry of
    the direction; return what the edit's summary records."""
    with torch.no_grad():
        direction.delta.add_(units)
    return {"samples": cfg.prior_samples, "top": cfg.prior_top, "scale": cfg.prior_scale,
            "form": form, "norm_w_spread": round(float(units.norm()), 3)}


def _prior_units(cfg: TrainConfig, direction: GlobalDirection, target: torch.Tensor,
                 bank: SampleBank, form: str) -> torch.Tensor:
    """The prior's offset [w_dim] (prior.retrieval_prior of ``form``) in the direction's
    w-spread units, times ``prior_scale``."""
    offset = retrieval_prior(bank, target, cfg.prior_top, form).to(direction.delta.device)
    return cfg.prior_scale * offset / direction.scale


def _optimiser_step(run: _Run) -> None:
    """The optimiser's step, the held rows put back on the prior's axis, the schedule's step."""
    run.opt.step()
    if isinstance(run.direction, GlobalDirection):
        run.direction.hold_to_axis()
    if run.sched is not None:
        run.sched.step()


def _hold_to_prior(direction: GlobalDirection, axis: torch.Tensor,
                   prior: dict[str, Any]) -> None:
    """Hold every row to the prior's ``axis`` (config ``along_prior``) from the first step."""
    direction.axis = axis / axis.norm().clamp_min(1e-12)
    direction.held = torch.ones(direction.delta.shape[0], dtype=torch.bool,
                                device=direction.delta.device)
    direction.hold_to_axis()
    prior["held_to_prior"] = True


REACH_TRACE_EVERY = 10  # steps between the held edit's reach readings (one CLIP encoding)


def _reading(run: _Run, loss: StepLoss, step: int) -> tuple[torch.Tensor, list[float]]:
    """The CLIP's embedding of ``step``'s picture and each image's reach (fit.reach), read
    once per step however many checks ask (the trace, the freeing, the reopening)."""
    if run.reading is None or run.reading[0] != step:
        assert run.fit is not None
        with torch.no_grad():
            embedding = run.clip.encode_image(loss.edited.detach())
        run.reading = (step, embedding, run.fit.reach(run.target, embedding))
    return run.reading[1], run.reading[2]


def _trace_reach(run: _Run, loss: StepLoss, step: int) -> None:
    """Every REACH_TRACE_EVERY steps of a held run: each image's reach (fit.reach) so far,
    recorded in the prior's summary (``reach_trace``). Why: whether an image that will fall
    short (and be trained again free) can be told early. The region choice's step is read
    by _free_short_rows, which records it."""
    if step % REACH_TRACE_EVERY or step == run.prune_step or run.prior is None \
            or not run.prior.get("held_to_prior") or run.fit is None or run.fit.aimless:
        return
    _, reached = _reading(run, loss, step)
    run.prior.setdefault("reach_trace", {})[str(step)] = [round(r, 3) for r in reached]


def _free_short_rows(run: _Run, loss: StepLoss) -> bool:
    """Just after the region choice, on the picture it gives (the step's composite): an image
    whose edit, held to the prior, is short of the bank's best samples (fit.off_target_rows:
    under ``free_below`` of the way with ``free_when_short``, else under ``MIN_REACH``) is
    freed for the rest of the run, in the region chosen; the others stay held. Why after the
    choice: held, the change often lies outside the piece that wins the region (an object
    recolour the prompt's w-direction gives to another object), so the reach that was near 1
    before the choice drops to near 0 with it, and such an image never recovered held (it was
    trained again from the start). True when an image was freed; recorded in the prior's
    summary."""
    direction = run.direction
    if not isinstance(direction, GlobalDirection) or direction.held is None or \
            run.fit is None or run.fit.aimless:
        return False
    edited, reached = _reading(run, loss, run.prune_step)
    if run.prior is not None:
        run.prior.setdefault("reach_trace", {})[str(run.prune_step)] = \
            [round(r, 3) for r in reached]
    bar = run.cfg.free_below if run.cfg.free_when_short else None
    _, short_rows = off_target_rows(reached, run.fit.past_best(run.target, edited),
                                    range(len(reached)), bar)
    short = torch.tensor([i in short_rows for i in range(len(reached))], dtype=torch.bool,
                         device=direction.held.device)
    if short.numel() == direction.held.numel():
        direction.held = direction.held & ~short
    if run.prior is not None:
        run.prior["freed_at_region_choice"] = short.nonzero().flatten().tolist()
    return bool(short.any())


REOPEN_AFTER = REACH_TRACE_EVERY  # steps after the region choice a freed image is looked at


def _freed_rows_still_short(run: _Run, loss: StepLoss, step: int) -> list[int]:
    """``TrainConfig.reopen_freed``, REOPEN_AFTER steps after the region choice: the images
    freed there that are still under ``fit.MIN_REACH`` of the way (nothing of the prompt
    yet). Why then and not at the choice: most freed images reach the prompt within those
    steps in the region chosen (reopening them all, on the tuning sets, broke three that
    got there and rescued as many); the ones still near 0 then stayed there."""
    direction = run.direction
    if not run.cfg.reopen_freed or step != run.prune_step + REOPEN_AFTER or \
            not isinstance(direction, GlobalDirection) or direction.held is None or \
            run.fit is None or run.fit.aimless or not bool((~direction.held).any()):
        return []
    edited, reached = _reading(run, loss, step)
    freed = (~direction.held).nonzero().flatten().tolist()
    _, short = off_target_rows(reached, run.fit.past_best(run.target, edited), freed, None)
    return short


def _reopen_freed_rows(run: _Run, rows: list[int], step: int) -> None:
    """The freed images ``rows`` (``_freed_rows_still_short``) get back the layers hardening
    turned off in the pieces their region kept (the masks' start value, through the gate;
    the layers it kept stay on), and the selector trains again for them alone (a gradient
    hook zeroes the others'; the optimiser's memory of the selector is cleared, so the held
    images' hardened masks do not move) until ``_harden_reopened``, half way from ``step``
    to the end. Why: held, the masks grow only where the held change helps; a freed edit
    confined to them (often one layer of the named piece) stayed at no reach and was
    trained again from the start."""
    selector = run.selector
    original = run.fixed_original
    if not isinstance(selector, SegmentSelector) or original is None or original.segs is None:
        return
    shown = present_segments(original.segs, int(selector.logits.shape[0]))
    with torch.no_grad():
        on = selector.weights() > 0.5
        chosen = on.any(1) & shown  # [P, K]
        reopened = torch.zeros_like(chosen)
        reopened[rows] = chosen[rows]
        cells = reopened[:, None].expand_as(selector.logits) & ~on  # what the choice kept stays
        start = torch.logit(torch.tensor(run.cfg.mask_init))
        selector.logits.copy_(torch.where(cells, start.to(selector.logits), selector.logits))
        if selector.gate is not None:
            selector.gate = torch.where(cells, torch.ones_like(selector.gate), selector.gate)
    trains = torch.zeros_like(selector.logits)
    trains[rows] = 1.0
    selector.logits.requires_grad_(True)
    run.reopened_hook = selector.logits.register_hook(lambda grad: grad * trains)
    for value in run.opt.state.get(selector.logits, {}).values():  # Adam starts afresh
        if isinstance(value, torch.Tensor):
            value.zero_()
    run.reharden_step = step + max(1, (run.last_step - step) // 2)
    if run.prior is not None:
        run.prior["reopened"] = {str(r): reopened[r].nonzero().flatten().tolist()
                                 for r in rows}


def _harden_reopened(run: _Run) -> None:
    """The reopened pieces hardened again (region.harden_selection: the held images' masks,
    already exact, stay as they are) and the selector frozen."""
    if run.reopened_hook is not None:
        run.reopened_hook.remove()
        run.reopened_hook = None
    original = run.fixed_original
    if isinstance(run.selector, SegmentSelector) and original is not None and \
            original.segs is not None:
        harden_selection(run.selector, original.segs)
    run.reharden_step = -1


def _cosine_rampdown(opt: torch.optim.Optimizer, steps: int) -> Any:
    """StyleCLIP's latent-optimisation schedule: flat, then a cosine ramp-down at the end."""
    def factor(i: int) -> float:
        t = i / max(1, steps)
        ramp = min(1.0, (1 - t) / 0.25)
        return 0.5 - 0.5 * math.cos(ramp * math.pi) if t > 0.75 else 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
