"""One trainer for the four CORAL forms: (SS or CAN) x (global direction or latent mapper).

Per image: the latents are fixed, so the original pass (image, features, segments) is computed
once. Per prompt: fresh latents every step; the original pass runs once per batch without
gradient. Each step then runs the blended pass (both branches only where a mask is active) and,
by default, G(w + d) for half of the CLIP term. Losses that become NaN stop the run and the last
good edit is returned; cancelling returns the best edit so far, marked partial.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..clip_model import CoralClip
from ..devices import isolated_rng
from ..errors import CancelledError, InputError
from ..progress import Reporter
from ..stylegan import Generator
from .blend import blended_synthesis, mask_policy
from .catalogue import SegmentCatalogue, catalogue_for
from .directions import GlobalDirection, LatentMapper
from .config import (ATTENTION_LR, GLOBAL_LR, MAX_PROMPT_CHARS, NETWORK_LR,  # noqa: F401
                     SEGMENT_LR, TrainConfig)
from .edit import Edit
from .selectors import AttentionSelector, SegmentSelector, composite
from .losses import (LossWeights, area_betas, area_loss, clip_loss, clip_loss_per_image,
                     leak_loss, mask_areas, tv_loss)
from .prior import SampleBank, retrieval_prior, sample_bank_for
from .pruning import prune_selection


@dataclass
class TrainResult:
    edit: Edit
    partial: bool
    history: list[dict[str, float]]
    stopped_reason: str = ""


ProgressInfo = dict[str, Any]


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


def train_edit(G: Generator, clip: CoralClip, cfg: TrainConfig,
               latents: torch.Tensor | None = None, segments: torch.Tensor | None = None,
               reporter: Reporter | None = None,
               catalogue: SegmentCatalogue | None = None) -> TrainResult:
    """Learn a CORAL edit for ``cfg.prompt``. ``latents`` [B, N, D] fix the images (per image;
    default: seeds from ``cfg.seed``); ``segments`` [B|1, K, H, W] replace the catalogue.
    Seeded by ``cfg.seed`` without touching the caller's global RNG state."""
    cfg.validate(G)
    with isolated_rng(cfg.seed, G.w_avg.device):
        return _train_edit(G, clip, cfg, latents, segments, reporter, catalogue)


def _train_edit(G: Generator, clip: CoralClip, cfg: TrainConfig,
                latents: torch.Tensor | None, segments: torch.Tensor | None,
                reporter: Reporter | None, catalogue: SegmentCatalogue | None) -> TrainResult:
    device = G.w_avg.device
    G.requires_grad_(False)
    clip.model.requires_grad_(False)
    if cfg.mode == "per_image" and latents is None:
        z = G.z_from_seeds(range(cfg.seed, cfg.seed + cfg.batch)).to(device)
        with torch.no_grad():
            latents = G.mapping_ws(z, cfg.truncation)
    if latents is not None:
        latents = G.check_ws(latents.to(device)).detach()
    if cfg.mode == "per_prompt" and latents is not None:
        raise InputError("per-prompt training samples its own latents; give latents only "
                         "for per-image edits")
    if segments is not None:
        segments = _check_segments(segments, latents, cfg)
    rows = 1
    if cfg.mode == "per_image":
        assert latents is not None  # per image: given, or made from the seeds above
        rows = latents.shape[0]
    direction = _make_direction(G, cfg, rows).to(device)
    prunes = cfg.prune_tolerance > 0 and not cfg.no_masks and (
        cfg.variant == "can" or segments is None or segments.shape[1] > 1)
    if cfg.variant == "ss" and segments is None:
        if catalogue is None:
            catalogue = catalogue_for(G, cfg.num_segments, cfg.catalogue_dir)
        if cfg.mode == "per_image":  # pieces are per image; per prompt needs shared ids
            catalogue = catalogue.with_pieces(cfg.segment_pieces, cfg.piece_min_cells)
    elif cfg.variant == "can" and prunes:  # CAN prunes over the catalogue's clusters
        catalogue = catalogue or catalogue_for(G, cfg.num_segments, cfg.catalogue_dir)
    selector = _make_selector(G, cfg, rows, segments, catalogue).to(device)
    opt = torch.optim.Adam([{"params": list(direction.parameters()), "lr": cfg.direction_lr()},
                            {"params": list(selector.parameters()), "lr": cfg.selector_lr()}])
    sched = _cosine_rampdown(opt, cfg.steps) if cfg.mode == "per_image" else None
    run_id = _run_identity(cfg, G, clip)
    start_step = _resume(cfg, run_id, direction, selector, opt)
    target = clip.encode_text([cfg.prompt])
    prior = None
    bank = None  # the sample bank (prior.py), read once for the prior and the fit check
    wants_prior = isinstance(direction, GlobalDirection) and start_step == 0
    wants_fit = cfg.check_fit and cfg.mode == "per_image" and not cfg.no_masks
    if cfg.prior_samples > 0 and (wants_prior or wants_fit):
        bank = sample_bank_for(G, clip, cfg.prior_samples, cfg.catalogue_dir,
                               _heartbeat(reporter, 0, cfg.steps, "sample bank"))
    if wants_prior and bank is not None:
        assert isinstance(direction, GlobalDirection)
        prior = _start_from_prior(cfg, direction, target, bank)
    fit = _prompt_fit(G, clip, cfg, latents, target, bank) if cfg.check_fit else None
    text_dir = None
    if cfg.directional:
        neutral = clip.encode_text([cfg.neutral])
        text_dir = torch.nn.functional.normalize(target - neutral, dim=-1)
    identity = None
    notes: list[str] = []
    if cfg.weights.identity > 0:
        if cfg.identity_model is None:
            notes.append("identity loss off: no IR-SE50 file (model_ir_se50.pth) was given")
        else:
            from .identity import IdentityLoss, load_irse50

            identity = IdentityLoss(load_irse50(cfg.identity_model)).to(device)
    betas = area_betas(G, cfg.weights)
    l2_weight = cfg.weights.l2_for(cfg.direction)
    sampler = _Sampler(G, cfg, latents if cfg.mode == "per_image" else None)
    noise_cache: dict[int, list] = {}
    original_cache: dict[str, Any] = {}
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, Any]] | None = None
    last_good: dict[str, Any] | None = None
    partial, reason = False, ""
    t0 = time.perf_counter()
    recompute = cfg.recompute if cfg.recompute is not None else auto_recompute(G, device)
    bf16 = (cfg.bf16 if cfg.bf16 is not None else auto_bf16(G, device)) and \
        device.type == "cuda"
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if bf16 else contextlib.nullcontext())

    def snapshot() -> dict[str, Any]:
        return {"direction": {k: v.detach().clone() for k, v in direction.state_dict().items()},
                "selector": {k: v.detach().clone() for k, v in selector.state_dict().items()}}

    last_step = start_step if fit is not None and fit.aimless else cfg.steps
    use_composite = cfg.composite and not cfg.no_masks and isinstance(selector, SegmentSelector)
    allowed_layers = [i for i in range(1, len(G.conv_layers) + 1)
                      if (cfg.only_layers is None or i in cfg.only_layers)
                      and (cfg.max_layer is None or i <= cfg.max_layer)]
    step = start_step
    prune_step = max(1, math.ceil(cfg.prune_at * cfg.steps)) if prunes else -1
    if cfg.harden_selection and isinstance(selector, SegmentSelector) and \
            0 < prune_step <= start_step:
        selector.logits.requires_grad_(False)  # resumed past the (hardened) region choice
    pruned: dict[str, Any] | None = None
    try:
        for step in range(start_step + 1, last_step + 1):
            if reporter is not None:
                reporter.check()
            ws = sampler.next()
            b = ws.shape[0]
            noise = noise_cache.setdefault(b, G.make_noise(b, "const"))
            if cfg.mode == "per_image" and original_cache:
                img_o, feats, segs = (original_cache["img"], original_cache["feats"],
                                      original_cache["segs"])
            else:
                with torch.no_grad():
                    img_o, feats = G.synthesize_with_features(ws, noise=noise)
                    segs = None
                    if segments is not None:
                        segs = segments.expand(b, -1, -1, -1)
                    elif catalogue is not None:  # SS always, CAN when it prunes
                        segs = catalogue.segments(feats)
                if cfg.mode == "per_image":
                    original_cache.update(img=img_o, feats=feats, segs=segs)
            phase_two = cfg.select_then_edit is not None and \
                step > cfg.select_then_edit * cfg.steps
            if phase_two:
                for p in selector.parameters():
                    p.requires_grad_(False)
            src = None
            if cfg.directional:  # the original images' embedding: once per batch
                if "src" not in original_cache or cfg.mode != "per_image":
                    with torch.no_grad():
                        original_cache["src"] = clip.encode_image(img_o)
                src = original_cache["src"]
            mix = 0.0 if phase_two else cfg.weights.directional_share
            if step == prune_step and segs is not None:
                judge_src, judge_dir, judge_mix = src, text_dir, mix
                if cfg.prune_directional and cfg.neutral.strip():
                    with torch.no_grad():
                        judge_src = src if src is not None else clip.encode_image(img_o)
                    judge_dir = text_dir if text_dir is not None else F.normalize(
                        target - clip.encode_text([cfg.neutral]), dim=-1)
                    judge_mix = 1.0
                image_loss = functools.partial(clip_loss_per_image, clip, target=target,
                                               source_img_emb=judge_src,
                                               text_direction=judge_dir,
                                               directional_share=judge_mix)
                pruned = _prune_region(G, cfg, selector, direction, ws, noise, feats, segs,
                                       image_loss, autocast,
                                       _heartbeat(reporter, step, cfg.steps,
                                                  "region contest and pruning"))
                if cfg.harden_selection and isinstance(selector, SegmentSelector):
                    harden_selection(selector, segs)
            with autocast:
                delta = direction(ws)
                raw = selector.masks(G, segs) if isinstance(selector, SegmentSelector) \
                    else selector.masks(feats, segs)
                masks = mask_policy(raw, no_masks=cfg.no_masks, only_layers=cfg.only_layers,
                                    max_layer=cfg.max_layer)
                img_b = blended_synthesis(G, ws, delta, masks, noise, recompute=recompute)
                if use_composite and isinstance(selector, SegmentSelector) and \
                        step >= prune_step:
                    region = selector.region(segs, G.img_resolution, allowed_layers, img_o)
                    img_b = composite(img_b, img_o, region)
                l_clip = clip_loss(clip, img_b, target, src, text_dir, mix)
                share = cfg.weights.clip_on_edit
                if share > 0:
                    img_e = G.synthesize(ws + delta, noise=noise)
                    l_clip = (1 - share) * l_clip + share * clip_loss(clip, img_e, target, src,
                                                                      text_dir, mix)
                l_l2 = direction.l2() if isinstance(direction, GlobalDirection) \
                    else direction.l2(delta)
                l_area = area_loss(masks, betas)
                l_tv = tv_loss(masks) if cfg.variant == "can" else torch.zeros((), device=device)
                l_id = identity(img_b, img_o) if identity is not None else \
                    torch.zeros((), device=device)
                l_leak = leak_loss(img_b, img_o, masks) if cfg.weights.leak > 0 else \
                    torch.zeros((), device=device)
                total = (cfg.weights.clip * l_clip + l2_weight * l_l2
                         + cfg.weights.area * l_area + cfg.weights.tv * l_tv
                         + cfg.weights.identity * l_id + cfg.weights.leak * l_leak)
            record = {"step": step, "total": float(total.detach()),
                      "clip": float(l_clip.detach()), "l2": float(l_l2.detach()),
                      "area": float(l_area.detach()), "tv": float(l_tv.detach()),
                      "identity": float(l_id.detach()), "leak": float(l_leak.detach())}
            if not math.isfinite(record["total"]):
                partial, reason = True, f"loss became {record['total']} at step {step}"
                break
            last_good = snapshot()
            if best is None or record["total"] < best[0]:
                best = (record["total"], last_good)
            history.append(record)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if cfg.checkpoint is not None and cfg.mode == "per_prompt" and \
                    step % cfg.checkpoint_every == 0:
                _save_checkpoint(cfg, run_id, direction, selector, opt, step)
            if reporter is not None:
                areas = mask_areas(masks)
                preview = img_b if (step % max(1, cfg.progress_every) == 0
                                    or step == cfg.steps) else None
                reporter.update(step, cfg.steps, losses=record, mask_area=areas,
                                preview=preview, masks=masks if preview is not None else None)
    except CancelledError:
        partial, reason = True, f"cancelled after step {len(history)}"
    if partial and best is not None:
        state = best[1] if reason.startswith("cancelled") else (last_good or best[1])
        direction.load_state_dict(state["direction"])
        selector.load_state_dict(state["selector"])
    elif partial and best is None:
        raise InputError(f"training stopped before any step completed ({reason})")
    if isinstance(selector, SegmentSelector):
        selector.bake_gate()
    if fit is not None:
        if history and not fit.aimless and isinstance(direction, GlobalDirection):
            with torch.no_grad():
                fit.judge_outcome(cfg.prompt, target, clip.encode_image(img_b.detach()))
        _leave_unchanged(direction, selector, fit)
    edit = Edit(variant=cfg.variant, direction_form=cfg.direction, mode=cfg.mode,
                prompt=cfg.prompt, neutral=cfg.neutral,
                direction=direction.train(False).requires_grad_(False),
                selector=selector.train(False).requires_grad_(False),
                generator_fingerprint=G.fingerprint(), resolution=G.img_resolution,
                num_ws=G.num_ws, w_dim=G.w_dim, clip_model_id=clip.model_id,
                catalogue=catalogue if segments is None and (
                    cfg.variant == "ss" or getattr(selector, "cluster_gate", None) is not None)
                else None,
                segments=segments, latents=latents if cfg.mode == "per_image" else None,
                max_layer=cfg.max_layer, only_layers=cfg.only_layers, no_masks=cfg.no_masks,
                composite=use_composite)
    edit.info = _summary_info(G, edit, cfg, history, time.perf_counter() - t0, partial, reason)
    edit.info["memory_options"] = {"recompute_activations": recompute,
                                   "bf16": bf16}
    if pruned is not None:  # [row, segment] and [row, layer] switched off by region pruning
        edit.info["region_pruning"] = {"at_step": prune_step, "tolerance": cfg.prune_tolerance,
                                       "removed": pruned}
    if prior is not None:
        edit.info["prior"] = prior
    if start_step:
        edit.info["resumed_from_step"] = start_step
        edit.info["steps"] = start_step + len(history)
    if not partial and cfg.checkpoint is not None:
        Path(cfg.checkpoint).unlink(missing_ok=True)  # the run is complete: nothing to resume
    if notes:
        edit.info["notes"] = notes
    warnings = list(fit.warnings) if fit is not None else []
    cut = clip.tokens_beyond_context(cfg.prompt)
    if cut:
        warnings.append(f"prompt: the CLIP reads {cut[1]} tokens and the prompt has {cut[0]}; "
                        "the rest was ignored")
    if history and not warnings:
        warnings = empty_edit_warnings(masks, img_b.detach(), img_o, cfg)
    if warnings:
        edit.info["warnings"] = warnings
    if fit is not None:
        edit.info["prompt_fit"] = {"relative_range": round(fit.relative_range, 3),
                                   "already": fit.already}
        if fit.reached:
            edit.info["prompt_fit"]["reach"] = fit.reached
    return TrainResult(edit, partial, history, reason)


HARD_LOGIT = 30.0  # sigmoid(30) is 1 in float32


def harden_selection(selector: SegmentSelector, segs: torch.Tensor) -> None:
    """Set the selected (layer, segment) weights (above 0.5, within the gate) to exactly 1 and
    the rest to 0, and freeze them (see ``TrainConfig.harden_selection``). Only segments the
    judged images ``segs`` [B, K, r, r] show are decided; the others (a per-prompt edit's
    cluster this batch lacks) are left as training left them."""
    present = segs.flatten(2).sum(2) > 0  # [B, K]
    if selector.logits.shape[0] == 1:
        present = present.any(0, keepdim=True)
    present = present[:, None].expand_as(selector.logits)
    with torch.no_grad():
        on = selector.active()
        # a row that selected nothing above 0.5 keeps its strongest pairs (within 10 % of its
        # best weight): soft masks still made a change there, and hardening must not erase it
        weights = selector.weights()
        best = weights.flatten(1).amax(1)[:, None, None]
        strongest = (weights >= 0.9 * best) & (best > 0)
        on = torch.where(on.flatten(1).any(1)[:, None, None], on, strongest)
        hard = torch.where(on, torch.full_like(selector.logits, HARD_LOGIT),
                           torch.full_like(selector.logits, -200.0))
        selector.logits.copy_(torch.where(present, hard, selector.logits))
    selector.logits.requires_grad_(False)


def _prune_region(G: Generator, cfg: TrainConfig,
                  selector: SegmentSelector | AttentionSelector, direction: nn.Module,
                  ws: torch.Tensor, noise: list, feats: list[torch.Tensor], segs: torch.Tensor,
                  image_loss: Callable[[torch.Tensor], torch.Tensor],
                  autocast: Any, check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Take region pruning's decision (pruning.py) on this step's images, set it as the
    selector's gate (SS: per row, layer and segment; CAN: over the catalogue's clusters), and
    return what was removed: [row, segment] and [row, layer] pairs."""
    rows = 1 if isinstance(selector, AttentionSelector) else int(selector.logits.shape[0])

    def set_gate(gate: torch.Tensor) -> None:
        if isinstance(selector, AttentionSelector):
            selector.cluster_gate = gate[:, 0]
        else:
            selector.gate = gate

    def gate_score(gate: torch.Tensor) -> torch.Tensor:
        set_gate(gate)
        with torch.no_grad(), autocast:
            raw = selector.masks(feats, segs) if isinstance(selector, AttentionSelector) \
                else selector.masks(G, segs)
            masks = mask_policy(raw, only_layers=cfg.only_layers, max_layer=cfg.max_layer)
            loss = image_loss(blended_synthesis(G, ws, direction(ws), masks, noise)).float()
        return loss.mean(0, keepdim=True) if rows == 1 else loss

    # Only segments present in these images can be judged: one absent here (a per-prompt
    # edit's cluster that none of this batch shows) is left exactly as training leaves it.
    present = segs.flatten(2).sum(2) > 0  # [B, K]
    if rows == 1:
        present = present.any(0, keepdim=True)
    contest = None
    if isinstance(selector, AttentionSelector):  # every cluster the images show is a unit
        allowed = before = present[:, None]
    else:
        # a segment selected at some layer may go on being used at every layer; a row that
        # selected nothing yet keeps every segment (there is nothing to measure)
        chosen = selector.active().any(1, keepdim=True) & present[:, None]
        chosen = chosen | (~chosen.any(2, keepdim=True) & present[:, None])
        allowed = chosen.expand_as(selector.logits)
        before = allowed
        if cfg.contest_steps > 0 and isinstance(direction, GlobalDirection):
            allowed, contest = _contest_regions(G, cfg, selector, direction, ws, noise, segs,
                                                image_loss, autocast, allowed, check)
    gate = prune_selection(allowed, gate_score, cfg.prune_tolerance,
                           layers=cfg.prune_layers and isinstance(selector, SegmentSelector))
    final = torch.maximum(gate, (~present).float()[:, None].expand_as(gate))
    set_gate(final)
    out: dict[str, Any] = {
        "segments": (before.any(1) & (final.amax(1) == 0)).nonzero().tolist(),
        "layers": (before.any(2) & (gate.amax(2) == 0)).nonzero().tolist()}
    if contest is not None:
        out["contest"] = contest
    return out


CONTEST_MIN_SHARE = 0.02  # of the picture: a region smaller than this never contests


def _contest_regions(G: Generator, cfg: TrainConfig, selector: SegmentSelector,
                     direction: GlobalDirection, ws: torch.Tensor, noise: list,
                     segs: torch.Tensor, image_loss: Callable[[torch.Tensor], torch.Tensor],
                     autocast: Any, allowed: torch.Tensor,
                     check: Callable[[], None] | None = None
                     ) -> tuple[torch.Tensor, list[dict[str, Any]] | None]:
    """Let the large regions contest the edit; return what pruning may still keep.

    Why (a departure from the paper, measured on the demo world): region pruning compares
    regions under the one direction trained with every region switched on, and that
    direction is shaped by whichever region moves the CLIP most. For "a yellow circle" it is
    the background: under it the background alone scored 0.68 and the circle alone 1.01 (no
    gain) by the directional loss, so pruning kept the background and the prompt's object was
    lost (4 of 4 such failures looked at). Here each large region alone gets
    ``contest_steps`` steps of its own copy of the direction under the pruning loss; the
    region that then does best wins, the other large regions are switched off, and the
    winner's direction carries on. Small pieces (edges, fragments) stay for greedy pruning.
    ``check`` (the reporter's) is called every step, so a cancel is honoured here too; the
    steps use the training's memory options (activation recomputation).
    """
    rows = int(selector.logits.shape[0])
    share = segs.flatten(2).float().mean(2)  # [B, K]
    if rows == 1:
        share = share.mean(0, keepdim=True)
    big = allowed.any(1) & (share >= CONTEST_MIN_SHARE)  # [P, K]
    counts = big.sum(1)
    if int(counts.max()) < 2:
        return allowed, None
    ranked = torch.argsort(torch.where(big, share, torch.full_like(share, -1.0)), dim=1,
                           descending=True)
    best_loss = torch.full((rows,), float("inf"), device=ws.device)
    best_piece = torch.full((rows,), -1, dtype=torch.long, device=ws.device)
    best_delta = direction.delta.detach().clone()
    losses: list[list[float]] = [[] for _ in range(rows)]
    previous_gate = selector.gate
    recompute = cfg.recompute if cfg.recompute is not None else auto_recompute(G, ws.device)

    def row_loss(img: torch.Tensor) -> torch.Tensor:
        loss = image_loss(img).float()
        return loss.mean(0, keepdim=True) if rows == 1 else loss

    try:  # a cancel mid-contest must leave the selector's gate as training left it
        for j in range(int(counts.max())):
            has = counts > j
            piece = ranked[:, j]
            gate = torch.zeros_like(allowed)
            for p in has.nonzero().flatten().tolist():
                gate[p, :, piece[p]] = allowed[p, :, piece[p]]
            selector.gate = gate.float()
            with torch.no_grad():
                masks = mask_policy(selector.masks(G, segs), only_layers=cfg.only_layers,
                                    max_layer=cfg.max_layer)
            rival = GlobalDirection(G.num_ws, G.w_dim, rows, scale=direction.scale).to(ws.device)
            with torch.no_grad():
                rival.delta.copy_(direction.delta)
            opt = torch.optim.Adam(rival.parameters(), lr=cfg.direction_lr())
            for _ in range(cfg.contest_steps):
                if check is not None:
                    check()
                with autocast:
                    loss = row_loss(blended_synthesis(G, ws, rival(ws), masks, noise,
                                                      recompute=recompute))
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
            with torch.no_grad(), autocast:
                final = row_loss(blended_synthesis(G, ws, rival(ws), masks, noise))
            for p in has.nonzero().flatten().tolist():
                losses[p].append(round(float(final[p]), 4))
            better = has & (final < best_loss)
            best_loss = torch.where(better, final, best_loss)
            best_piece = torch.where(better, piece, best_piece)
            best_delta[better] = rival.delta.detach()[better]
    finally:
        selector.gate = previous_gate
    contested = counts >= 2
    with torch.no_grad():
        direction.delta[contested] = best_delta[contested]
    losers = big & contested[:, None]
    for p in contested.nonzero().flatten().tolist():
        losers[p, best_piece[p]] = False
    report = [{"row": p, "pieces": ranked[p, :int(counts[p])].tolist(), "losses": losses[p],
               "winner": int(best_piece[p])} for p in contested.nonzero().flatten().tolist()]
    return allowed & ~losers[:, None], report


def describe_memory_options(options: dict[str, bool]) -> str:
    """One line for the CLI and the benchmark: which memory options a run used."""
    return ", ".join(f"{name} {'on' if used else 'off'}" for name, used in options.items())


def auto_recompute(G: Generator, device: torch.device) -> bool:
    """Recompute activations where the blended pass's activations dominate a step's memory.

    CPU, 256 px and up: measured there (config-f 256 px, SS per image, batch 4) peak RSS 9.6 ->
    6.0 GiB and 27.7 -> 23.6 s/step (allocation costs more than the recomputation). CUDA: at 512
    px and up when less than 16 GiB is free (not yet measured: no GPU has been lent)."""
    if device.type == "cpu":
        return G.img_resolution >= 256
    return _cuda_memory_is_tight(G, device)


def auto_bf16(G: Generator, device: torch.device) -> bool:
    """bf16 autocast where memory is tight: CUDA, 512 px and up, less than 16 GiB free (the
    8 GB-card goal at 1024 px). Off on the CPU (no memory gain there measured). Not yet
    measured on a GPU: none has been lent."""
    return _cuda_memory_is_tight(G, device)


def _cuda_memory_is_tight(G: Generator, device: torch.device) -> bool:
    if device.type != "cuda" or G.img_resolution < 512:
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return free < 16 * 2**30


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


def _prompt_fit(G: Generator, clip: CoralClip, cfg: TrainConfig,
                latents: torch.Tensor | None, target: torch.Tensor,
                bank: SampleBank | None) -> Any:
    """fit.py's checks for a per-image edit (None where they do not apply: per prompt, no
    sample bank)."""
    if cfg.mode != "per_image" or latents is None or bank is None or cfg.no_masks:
        return None
    from .fit import check_prompt_fit

    with torch.no_grad():
        images = G.synthesize(latents, noise=G.make_noise(latents.shape[0], "const"))
        embeddings = clip.encode_image(images)
    return check_prompt_fit(bank, target, embeddings, cfg.prompt)


@torch.no_grad()
def _leave_unchanged(direction: nn.Module, selector: nn.Module, fit: Any) -> None:
    """Zero the edit for every image the prompt does not fit (all of them when it has nothing
    to aim at): its direction row is 0 and its masks are empty, so applying it gives the
    original image exactly."""
    rows = fit.unchanged_rows()
    if not rows or not isinstance(direction, GlobalDirection):
        return
    for i in rows:
        direction.delta[i if direction.delta.shape[0] > 1 else 0].zero_()
        if isinstance(selector, SegmentSelector):
            selector.logits[i if selector.logits.shape[0] > 1 else 0].fill_(-30.0)


def _start_from_prior(cfg: TrainConfig, direction: GlobalDirection, target: torch.Tensor,
                      bank: SampleBank) -> dict[str, Any]:
    """Add the prompt's CLIP-retrieval prior (prior.py) to every row and W+ entry of the
    direction, in its w-spread units; return what the edit's summary records."""
    offset = retrieval_prior(bank, target, cfg.prior_top).to(direction.delta.device)
    units = cfg.prior_scale * offset / direction.scale
    with torch.no_grad():
        direction.delta.add_(units)
    return {"samples": cfg.prior_samples, "top": cfg.prior_top, "scale": cfg.prior_scale,
            "norm_w_spread": round(float(units.norm()), 3)}


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


def _cosine_rampdown(opt: torch.optim.Optimizer, steps: int) -> Any:
    """StyleCLIP's latent-optimisation schedule: flat, then a cosine ramp-down at the end."""
    def factor(i: int) -> float:
        t = i / max(1, steps)
        ramp = min(1.0, (1 - t) / 0.25)
        return 0.5 - 0.5 * math.cos(ramp * math.pi) if t > 0.75 else 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# Fields that do not change what a run computes: how often it reports or saves, where it saves
# and caches. Every other TrainConfig field (present or added later) is part of a run's identity.
NOT_IDENTITY = frozenset({"progress_every", "checkpoint", "checkpoint_every", "catalogue_dir"})


def _run_identity(cfg: TrainConfig, G: Generator, clip: CoralClip) -> str:
    """What must match for a checkpoint to be resumed (not the step count): the whole config
    but the fields in NOT_IDENTITY, and the generator's and the CLIP's identity (a same-shaped
    other generator must not resume). Built from the config's fields, not a hand list, so that a
    new setting (or a new --lr) can never resume an old run's Adam state by omission."""
    return repr((sorted(config_record(cfg).items()), G.fingerprint(), clip.model_id))


def config_record(cfg: TrainConfig) -> dict[str, Any]:
    """Every setting that shapes the run (all fields but NOT_IDENTITY), JSON-ready: the
    resume identity and the edit's own record of how it was made."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        if f.name in NOT_IDENTITY:
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, LossWeights):
            value = value.to_dict()
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _save_checkpoint(cfg: TrainConfig, run: str, direction: nn.Module, selector: nn.Module,
                     opt: torch.optim.Optimizer, step: int) -> None:
    from ..atomic import atomic_path

    assert cfg.checkpoint is not None
    with atomic_path(cfg.checkpoint) as tmp:
        # region pruning's decision, if taken yet
        gate = getattr(selector, "gate", None) if isinstance(selector, SegmentSelector) \
            else getattr(selector, "cluster_gate", None)
        torch.save({"direction": direction.state_dict(), "selector": selector.state_dict(),
                    "opt": opt.state_dict(), "step": step, "run": run,
                    **({"gate": gate} if gate is not None else {})}, tmp)


def _resume(cfg: TrainConfig, run: str, direction: nn.Module, selector: nn.Module,
            opt: torch.optim.Optimizer) -> int:
    """The step to continue from: the checkpoint's, if it is this very run's; 0 otherwise.
    An unreadable (truncated) checkpoint is set aside with a note, never a blocker."""
    if cfg.checkpoint is None or cfg.mode != "per_prompt" or not Path(cfg.checkpoint).is_file():
        return 0
    try:
        from ..formats.weights import load_weights_file

        # the project's own reader: depth- and size-scanned before torch.load sees the file
        state = load_weights_file(cfg.checkpoint, "per-prompt training checkpoint")
        if state.get("run") != run:
            return 0  # a checkpoint of another run (other prompt, settings or models)
        direction.load_state_dict(state["direction"])
        selector.load_state_dict(state["selector"])
        opt.load_state_dict(state["opt"])
        if "gate" in state and isinstance(selector, SegmentSelector):
            selector.gate = state["gate"].to(selector.logits.device)
        elif "gate" in state and isinstance(selector, AttentionSelector):
            selector.cluster_gate = state["gate"]
        return int(state["step"])
    except Exception:  # noqa: BLE001 - truncated or corrupt: start afresh (replaced later)
        Path(cfg.checkpoint).unlink(missing_ok=True)
        return 0


VISIBLE_STEP = 8 / 255 * 2   # one visible grey level step, in the generator's [-1, 1] units
VISIBLE_SHARE = 0.002         # of the pixels, for the edit to count as visible


def empty_edit_warnings(masks: list, edited: torch.Tensor, original: torch.Tensor,
                        cfg: TrainConfig) -> list[str]:
    """Say so when an edit selected no layer or changes nothing visible, with what to try:
    a silent no-op edit is the worst outcome for a user who queued a long run."""
    out = []
    if not cfg.no_masks and all(m is None or float(m.detach().max()) < 0.5 for m in masks):
        out.append("the edit selected no layer (every mask stayed below 0.5): it changes "
                   "almost nothing. Try more steps, a smaller area weight, or a prompt that "
                   "names what should change")
    changed = ((edited - original).abs().amax(1) > VISIBLE_STEP).float().mean()
    if float(changed) < VISIBLE_SHARE:
        out.append(f"the edit changes {100 * float(changed):.2f} % of the pixels visibly: "
                   "try more steps or a higher learning rate, or check the prompt")
    return out


def _summary_info(G: Generator, edit: Edit, cfg: TrainConfig, history: list[dict[str, float]],
                  wall: float, partial: bool, reason: str) -> dict[str, Any]:
    from .visualize import selection_summary

    info: dict[str, Any] = {
        "steps": len(history), "steps_requested": cfg.steps, "wall_seconds": round(wall, 2),
        "lr": {"direction": cfg.direction_lr(), "selector": cfg.selector_lr()},
        "batch": cfg.batch, "seed": cfg.seed,
        "loss_weights": cfg.weights.to_dict(), "directional": cfg.directional,
        "final_losses": history[-1] if history else {}, "partial": partial,
        "config": config_record(cfg),
    }
    if reason:
        info["stopped_reason"] = reason
    info.update(selection_summary(G, edit))
    return info


Callback = Callable[[int, int, ProgressInfo], None]
