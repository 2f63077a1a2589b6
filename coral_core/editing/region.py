"""The region choice (departures from the paper, each switchable in ``TrainConfig``): at
``prune_at`` of the steps, large regions contest the edit (``contest_steps``), region pruning
switches off what the CLIP does not miss (``prune_tolerance``), and the choice is hardened to
full strength (``harden_selection``). The paper trains the soft masks to the end instead."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..clip_model import CoralClip
from ..stylegan import Generator
from .blend import blended_synthesis
from .config import TrainConfig
from .directions import GlobalDirection
from .losses import area_betas, clip_loss_per_image
from .memory import MemoryPlan
from .objective import layer_masks
from .pruning import prune_selection
from .selectors import AttentionSelector, SegmentSelector, composite

HARD_LOGIT = 30.0  # sigmoid(30) is 1 in float32
CONTEST_MIN_SHARE = 0.02  # of the picture: a region smaller than this never contests

ImageLoss = Callable[[torch.Tensor], torch.Tensor]
Selector = SegmentSelector | AttentionSelector


@dataclass
class RegionJudge:
    """What the region choice judges on: this step's images (latents, noise, original
    features and segments), the per-image loss it compares regions by, the run's memory
    options, and ``check`` (the reporter's heartbeat: cancel and progress) called per unit."""
    G: Generator
    cfg: TrainConfig
    ws: torch.Tensor
    noise: list
    feats: list[torch.Tensor]
    segs: torch.Tensor
    image_loss: ImageLoss
    memory: MemoryPlan
    check: Callable[[], None] | None = None
    # with the composite (TrainConfig.composite): the original images and the layers the edit
    # may use, so that a candidate region is judged on the picture the user will get (the
    # change kept inside the region only); None judges the blended picture as it is
    original: torch.Tensor | None = None
    layers: list[int] | None = None
    # per prompt: [B] 1 for the images the scene check lets the edit act on (trainer's
    # ``fit_scenes_only``); the others are not judged. None: every image is.
    fits: torch.Tensor | None = None
    # per row (per-image edits): the piece where the image shows what the prompt names
    # (locate.named_pieces), which then wins the contest outright; None: the contest decides
    named: list[int | None] | None = None

    def judged(self) -> torch.Tensor:
        """[B] bool: the images whose losses count (all, unless none would)."""
        if self.fits is None or not bool((self.fits > 0).any()):
            return torch.ones(self.ws.shape[0], dtype=torch.bool, device=self.ws.device)
        return self.fits > 0

    def masks(self, selector: Selector, hardened: bool = False) -> list[torch.Tensor | None]:
        """The selector's masks as its gate now stands (float32, no gradient); ``hardened``
        (segment selection): as ``harden_selection`` would then set them."""
        with torch.no_grad():
            if hardened and isinstance(selector, SegmentSelector):
                with _as_hardened(selector, self.segs):
                    return layer_masks(selector, self.G, self.feats, self.segs, self.cfg)
            return layer_masks(selector, self.G, self.feats, self.segs, self.cfg)

    def loss(self, selector: Selector, masks: list[torch.Tensor | None],
             direction: torch.nn.Module, rows: int, recompute: bool = False,
             per_image: bool = False) -> torch.Tensor:
        """The judged loss per row (one row: the mean over the ``judged`` images; with
        ``per_image``, [1, N], each of theirs) of ``direction`` blended through ``masks`` (the
        selector's, as its gate now stands)."""
        with self.memory.autocast():
            img = blended_synthesis(self.G, self.ws, direction(self.ws), masks, self.noise,
                                    recompute=recompute)
            if self.original is not None and isinstance(selector, SegmentSelector):
                with torch.no_grad():
                    region = selector.region(
                        self.segs, self.G.img_resolution, self.layers, self.original,
                        gated=True)
                img = composite(img, self.original, region)
            loss = self.image_loss(img).float()
        if rows > 1:
            return loss
        loss = loss[self.judged()]
        return loss[None] if per_image else loss.mean(0, keepdim=True)

    def area(self, masks: list[torch.Tensor | None], rows: int) -> torch.Tensor:
        """The training's area term (its weight and layer weights) for these masks, per row
        as ``loss`` gives the CLIP loss (one row: the mean over the judged images)."""
        betas = area_betas(self.G, self.cfg.weights)
        per_image = torch.zeros(self.ws.shape[0], device=self.ws.device)
        for m, b in zip(masks, betas):
            if m is not None:
                per_image = per_image + b * m.float().mean((1, 2, 3))
        cost = self.cfg.weights.area * per_image
        return cost if rows > 1 else cost[self.judged()].mean(0, keepdim=True)


def judge_loss(clip: CoralClip, cfg: TrainConfig, target: torch.Tensor,
               original: torch.Tensor, source: torch.Tensor | None,
               text_direction: torch.Tensor | None, share: float) -> ImageLoss:
    """The per-image CLIP loss regions are judged by: the training's own, or (with
    ``prune_directional`` and a neutral prompt) the directional one alone."""
    if cfg.prune_directional and cfg.neutral.strip():
        with torch.no_grad():
            source = source if source is not None else clip.encode_image(
                original, cfg.clip_sees_display)
        text_direction = text_direction if text_direction is not None else F.normalize(
            target - clip.encode_text([cfg.neutral]), dim=-1)
        share = 1.0
    return functools.partial(clip_loss_per_image, clip, target=target, source_img_emb=source,
                             text_direction=text_direction, directional_share=share,
                             as_displayed=cfg.clip_sees_display)


def hardened_pairs(selector: SegmentSelector, present: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """[P, L, K] bool: the (layer, segment) pairs hardening sets to full strength: those
    above 0.5 within the gate; a row that selected nothing above 0.5 keeps its strongest
    pairs (within 10 % of its best weight): soft masks still made a change there, and
    hardening must not erase it. ``present`` [P|1, K]: the segments the judged images show;
    only those are weighed. Why: a segment the image lacks was never trained, so its weight
    stays at the selector's start (0.5); counted, it passed as selected and left the row's
    own pieces, trained a little below 0.5, switched off (an empty region)."""
    with torch.no_grad():
        weights = selector.weights()
        if present is not None:
            weights = weights * present[:, None].to(weights.dtype)
        on = weights > 0.5
        best = weights.flatten(1).amax(1)[:, None, None]
        strongest = (weights >= 0.9 * best) & (best > 0)
        return torch.where(on.flatten(1).any(1)[:, None, None], on, strongest)


def _hard_logits(on: torch.Tensor) -> torch.Tensor:
    return torch.where(on, torch.full(on.shape, HARD_LOGIT, device=on.device),
                       torch.full(on.shape, -200.0, device=on.device))


def harden_selection(selector: SegmentSelector, segs: torch.Tensor) -> None:
    """Set the selected (layer, segment) weights (``hardened_pairs``) to exactly 1 and the
    rest to 0, and freeze them (see ``TrainConfig.harden_selection``). Only segments the
    judged images ``segs`` [B, K, r, r] show are decided; the others (a per-prompt edit's
    cluster this batch lacks) are left as training left them."""
    shown = present_segments(segs, int(selector.logits.shape[0]))
    present = shown[:, None].expand_as(selector.logits)
    with torch.no_grad():
        hard = _hard_logits(hardened_pairs(selector, shown)).to(selector.logits.dtype)
        selector.logits.copy_(torch.where(present, hard, selector.logits))
    selector.logits.requires_grad_(False)


@contextlib.contextmanager
def _as_hardened(selector: SegmentSelector, segs: torch.Tensor) -> Iterator[None]:
    """For the duration, the selector's masks are those ``harden_selection`` would leave on
    the images ``segs`` shows (a segment they lack has a zero mask on them anyway)."""
    saved = selector.logits.detach().clone()
    shown = present_segments(segs, int(saved.shape[0]))
    with torch.no_grad():
        selector.logits.copy_(_hard_logits(hardened_pairs(selector, shown)).to(saved.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            selector.logits.copy_(saved)


def present_segments(segs: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows, K]: which segments the judged images show (one row: any of them). Only those can
    be judged; one absent here (a per-prompt edit's cluster that none of this batch shows) is
    left exactly as training leaves it."""
    present = segs.flatten(2).sum(2) > 0  # [B, K]
    return present.any(0, keepdim=True) if rows == 1 else present


def _set_gate(selector: Selector, gate: torch.Tensor | None) -> None:
    if isinstance(selector, AttentionSelector):
        selector.cluster_gate = None if gate is None else gate[:, 0]
    else:
        selector.gate = gate


def prune_region(judge: RegionJudge, selector: Selector, direction: torch.nn.Module,
                 more: Sequence[RegionJudge] = ()) -> dict[str, Any]:
    """Take region pruning's decision (pruning.py) on the judged images, set it as the
    selector's gate (SS: per row, layer and segment; CAN: over the catalogue's clusters), and
    return what was removed: [row, segment] and [row, layer] pairs (and the contest's report).
    ``more``: further batches of a per-prompt edit (one row), judged with ``judge``'s by the
    mean loss; a cluster any of them shows is judged."""
    rows = 1 if isinstance(selector, AttentionSelector) else int(selector.logits.shape[0])
    judges = [judge, *more]
    if rows > 1 and more:
        raise ValueError("only a per-prompt edit (one row) is judged on several batches")

    per_image = judge.cfg.mode == "per_prompt" and rows == 1

    def gate_score(gate: torch.Tensor) -> torch.Tensor:
        _set_gate(selector, gate)
        with torch.no_grad():
            if per_image:  # [1, N]: each judged image's loss (pruning.prune_selection)
                return torch.cat([j.loss(selector, j.masks(selector), direction, rows,
                                         per_image=True) for j in judges], 1)
            return torch.stack([j.loss(selector, j.masks(selector), direction, rows)
                                for j in judges]).mean(0)

    present = torch.stack([present_segments(j.segs, rows) for j in judges]).any(0)
    contest = None
    if isinstance(selector, AttentionSelector):  # every cluster the images show is a unit
        allowed = before = present[:, None]
    else:
        # a segment selected at some layer may go on being used at every layer; a row that
        # selected nothing yet keeps every segment (there is nothing to measure)
        chosen = selector.active().any(1, keepdim=True) & present[:, None]
        chosen = chosen | (~chosen.any(2, keepdim=True) & present[:, None])
        for p, k in _named(judge, rows).items():  # the named piece is always a candidate
            chosen[p, :, k] = present[p, k]
        allowed = before = chosen.expand_as(selector.logits)
        if judge.cfg.contest_steps > 0 and isinstance(direction, GlobalDirection):
            allowed, contest = contest_regions(judge, selector, direction, allowed)
    gate = prune_selection(allowed, gate_score, judge.cfg.prune_tolerance,
                           layers=judge.cfg.prune_layers and isinstance(selector, SegmentSelector),
                           image_keep=judge.cfg.prune_image_keep if per_image else 0.0)
    final = torch.maximum(gate, (~present).float()[:, None].expand_as(gate))
    _set_gate(selector, final)
    out: dict[str, Any] = {
        "segments": (before.any(1) & (final.amax(1) == 0)).nonzero().tolist(),
        "layers": (before.any(2) & (gate.amax(2) == 0)).nonzero().tolist(),
        "judged_images": sum(int(j.ws.shape[0]) for j in judges)}
    if contest is not None:
        out["contest"] = contest
    return out


def contest_regions(judge: RegionJudge, selector: SegmentSelector,
                    direction: GlobalDirection, allowed: torch.Tensor
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
    A row whose image shows the prompt's named thing in one of its large pieces
    (``judge.named``, locate.py) gives that piece the win: it trains in every round the
    others would have had, each round going on from the last (the same cost).
    A cancel (raised by ``judge.check``) leaves the selector's gate as training left it.
    """
    rows = int(selector.logits.shape[0])
    share = judge.segs.flatten(2).float().mean(2)  # [B, K]
    if rows == 1:
        share = share.mean(0, keepdim=True)
    big = allowed.any(1) & (share >= CONTEST_MIN_SHARE)  # [P, K]
    named = _named_rows(judge, big)
    counts = big.sum(1)
    decided = counts >= 2  # a row with one large piece has nothing to decide
    if not bool(decided.any()):
        return allowed, None
    ranked = torch.argsort(torch.where(big, share, torch.full_like(share, -1.0)),
                           dim=1, descending=True)
    for p, k in named.items():  # the named piece wins: it trains in every round, on and on
        ranked[p] = k
    best_piece, best_delta, losses = _rounds(judge, selector, direction, allowed, ranked,
                                             counts * decided, list(named))
    with torch.no_grad():
        direction.delta[decided] = best_delta[decided]
    losers = big & decided[:, None]
    for p in decided.nonzero().flatten().tolist():
        losers[p, best_piece[p]] = False
    report = [{"row": p, "pieces": ranked[p, :1 if p in named else int(counts[p])].tolist(),
               "losses": losses[p], "winner": int(best_piece[p]),
               **({"named": True} if p in named else {})}
              for p in decided.nonzero().flatten().tolist()]
    return allowed & ~losers[:, None], report


def _rounds(judge: RegionJudge, selector: SegmentSelector, direction: GlobalDirection,
            allowed: torch.Tensor, ranked: torch.Tensor, counts: torch.Tensor,
            named: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[list[float]]]:
    """The contest's rounds: in round j every row with more than j candidates trains its j-th
    (``ranked``) alone; a ``named`` row's rival goes on from its best so far. Return each
    row's best piece and direction offsets, and its losses round by round."""
    rows = int(ranked.shape[0])
    best_loss = torch.full((rows,), float("inf"), device=judge.ws.device)
    best_piece = torch.full((rows,), -1, dtype=torch.long, device=judge.ws.device)
    best_delta = direction.delta.detach().clone()
    losses: list[list[float]] = [[] for _ in range(rows)]
    previous_gate = selector.gate
    try:
        for j in range(int(counts.max())):
            has, piece = counts > j, ranked[:, j]
            gate = torch.zeros_like(allowed)
            for p in has.nonzero().flatten().tolist():
                gate[p, :, piece[p]] = allowed[p, :, piece[p]]
            selector.gate = gate.float()
            start = direction.delta.detach().clone()
            for p in named:
                start[p] = best_delta[p]
            rival, final = _train_rival(judge, selector, direction, rows, start)
            for p in has.nonzero().flatten().tolist():
                losses[p].append(round(float(final[p]), 4))
            better = has & (final < best_loss)
            best_loss = torch.where(better, final, best_loss)
            best_piece = torch.where(better, piece, best_piece)
            best_delta[better] = rival.delta.detach()[better]
    finally:
        selector.gate = previous_gate
    return best_piece, best_delta, losses


def _named(judge: RegionJudge, rows: int) -> dict[int, int]:
    """{row: piece} for the rows with a named piece (``judge.named``, one per row)."""
    if judge.named is None or not judge.cfg.locate_named or len(judge.named) != rows:
        return {}
    return {p: int(k) for p, k in enumerate(judge.named) if k is not None}


def _named_rows(judge: RegionJudge, big: torch.Tensor) -> dict[int, int]:
    """{row: piece} for the rows whose named piece is one of their large allowed pieces;
    only those are decided by it."""
    return {p: k for p, k in _named(judge, int(big.shape[0])).items() if bool(big[p, k])}


def _train_rival(judge: RegionJudge, selector: SegmentSelector, direction: GlobalDirection,
                 rows: int, start: torch.Tensor) -> tuple[GlobalDirection, torch.Tensor]:
    """A copy of the direction (from offsets ``start``) trained ``contest_steps`` steps on
    the selector's current gate alone; return it and its final judged loss per row."""
    masks = judge.masks(selector, hardened=judge.cfg.harden_selection
                        and judge.cfg.contest_hardened)
    rival = GlobalDirection(judge.G.num_ws, judge.G.w_dim, rows,
                            scale=direction.scale).to(judge.ws.device)
    with torch.no_grad():
        rival.delta.copy_(start)
    rival.hold_like(direction)
    area = judge.area(masks, rows) if judge.cfg.contest_counts_area else 0.0
    opt = torch.optim.Adam(rival.parameters(), lr=judge.cfg.direction_lr())
    for _ in range(judge.cfg.contest_steps):
        if judge.check is not None:
            judge.check()
        loss = judge.loss(selector, masks, rival, rows, recompute=judge.memory.recompute)
        if not loss.requires_grad:  # no mask of this region reaches the direction: its
            break                   # picture cannot change, nothing to train
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        rival.hold_to_axis()
    with torch.no_grad():
        return rival, judge.loss(selector, masks, rival, rows) + area
