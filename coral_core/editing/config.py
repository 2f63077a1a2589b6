"""Training settings as data: ``TrainConfig`` and ``LossWeights`` with their defaults, and the
names of the choices they take. No torch here: the CLI's parser, the nodes' widgets and the
presets read every default from this module without loading the engine (``coral --help``
stays fast, and there is one place where a default is written).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..validate import MAX_STEPS, finite, whole

if TYPE_CHECKING:
    from ..stylegan import Generator

VARIANTS = ("ss", "can")
PRIOR_FORMS = ("matched", "mean")  # prior.retrieval_prior
DIRECTIONS = ("global", "mapper")
MODES = ("per_image", "per_prompt")
MAX_PROMPT_CHARS = 2000

AREA_WEIGHTINGS = ("spread", "spread_area", "uniform", "resolution", "inverse_resolution")


@dataclass
class LossWeights:
    """Weights of the loss terms; ``l2=None`` picks the direction form's default."""

    clip: float = 1.0
    l2: float | None = None
    # area: the mask-area weight. Tighter keeps edits off what the prompt does not name;
    # looser lets a large region (a background) keep a coarser layer, where a recolour needs a
    # shorter move through W+. 0.02 with the direction prior; measurements: docs/method.md.
    area: float = 0.02
    tv: float = 0.01
    identity: float = 0.0
    clip_on_edit: float = 0.5         # share of the CLIP term computed on G(w + d)
    directional_share: float = 1.0    # with a neutral prompt: directional share of the CLIP term
    leak: float = 0.0                 # share of the change outside the edit's own finest mask
    # with the composite, from the region choice on: how unevenly the change spreads over the
    # chosen region, relative to its size (losses.uneven_change_loss: rings of the old colour
    # round objects, frames, muddy gradients), for the images whose change is no more uneven
    # than ``even_change_below`` (losses.uneven_share; a change of shape is left alone).
    # Measurements: docs/method.md
    even_change: float = 3.0
    even_change_below: float = 0.15
    area_weighting: str = "spread"
    area_layer_weights: list[float] | None = field(default=None)

    def l2_for(self, direction: str) -> float:
        if self.l2 is not None:
            return self.l2
        # global: on sum(u^2) with u in w-spread units; a tighter one holds fine-layer
        # recolours short of their colour (docs/method.md). mapper: StyleCLIP's 0.8 on the
        # mean, not re-measured here
        return 0.8 if direction == "mapper" else 0.0001

    def to_dict(self) -> dict:
        return dict(self.__dict__)



GLOBAL_LR = 0.05      # global W+ offset, in w-spread units
NETWORK_LR = 2e-3     # latent mapper weights
SEGMENT_LR = 0.05     # segment-selection logits
ATTENTION_LR = 5e-3   # attention-network heads


@dataclass
class TrainConfig:
    prompt: str
    neutral: str = ""
    variant: str = "ss"
    direction: str = "global"
    mode: str = "per_image"
    steps: int = 100
    lr: float | None = None
    batch: int = 4
    seed: int = 0
    # 1.0 everywhere (CLI, nodes, demo), as NVIDIA's generate.py: seed N is the same picture in
    # every entry point, and the demo generator draws exactly the scene its z names.
    truncation: float = 1.0
    num_segments: int = 6
    # Per image: split the catalogue's clusters into connected pieces, up to this many per
    # image (0: the clusters as they are), so one of two similar objects can be chosen.
    segment_pieces: int = 12
    # ... and a piece of fewer cells than this (at the catalogue's 32-px grid) joins the
    # neighbour it shares most border with: corner and edge fragments (catalogue.py). 0: off.
    piece_min_cells: int = 3
    # Outline rings and border strips (thin clusters along every edge between two parts) are
    # handed cell by cell to the parts beside them (catalogue.dissolve_boundaries), per image
    # and per prompt: left apart, no prompt selects them and edits stop short of the edge.
    dissolve_boundaries: bool = True
    mask_init: float = 0.5    # every mask's starting value (the paper: logits 0, so 0.5)
    max_layer: int | None = None
    only_layers: list[int] | None = None  # restrict masks to these layers (FEAT-style: one)
    no_masks: bool = False                # StyleCLIP-style baseline: d everywhere, no masks
    directional: bool = False
    # Two phases (needs ``directional``): for this share of the steps the selector learns the
    # region under the directional CLIP loss (which keeps the other regions out); then the
    # selector is frozen and the direction alone continues under the global CLIP loss.
    select_then_edit: float | None = None
    # Region pruning (see pruning.py): at this share of the steps, drop the segments (CAN: the
    # catalogue's clusters) the edit can do without while keeping >= 1 - prune_tolerance of its
    # CLIP gain; prune_layers makes whole layers units too (SS). Tolerance 0 switches it off
    # (the paper's method).
    prune_tolerance: float = 0.3
    prune_at: float = 0.6
    # Per prompt: region pruning judges this many batches of ``batch`` samples (the step's own
    # and fresh ones from a generator seeded apart from training's), not one. Why: the
    # catalogue's clusters split by colour (a warm and a cool background cluster, each in half
    # the pictures), so four samples decided for every picture; "an orange background" kept only
    # a cluster present in 9 % of pictures and selected nothing (session 12; history.md).
    prune_batches: int = 4
    # Per prompt: a unit also stays if removing it leaves any judged picture the edit clearly
    # moves with less than this share of its own CLIP gain (pruning.prune_selection): the
    # mean alone dropped a background cluster of a third of the pictures (session 15: the
    # edit then selected nothing in 4 of 12 unseen scenes). 0: the mean alone.
    prune_image_keep: float = 0.3
    prune_layers: bool = False
    # With a neutral prompt, region pruning judges the candidate regions by the directional
    # CLIP loss (the change must point from the neutral text to the prompt), whatever loss
    # trains the edit (see pruning.py for why and what it measured).
    prune_directional: bool = True
    # Before pruning, the large regions (each >= 2 % of the picture) contest the edit: each
    # alone gets a short re-optimisation of the direction, and the best by the pruning loss
    # wins (see _contest_regions). 0 switches it off.
    contest_steps: int = 15
    # ... and each region's score counts the training's own area term (LossWeights.area with
    # its layer weights, for the masks that region would have) beside the CLIP loss, as the
    # paper's objective does: the CLIP alone often scores a background and the named object
    # within a few thousandths, and the larger region then took an object's edit.
    contest_counts_area: bool = True
    # ... and each region is judged with the masks hardening will give it (harden_selection:
    # its layers above 0.5 at full strength, the rest off), as the user will get it. Judged
    # with the soft masks joint training left, a background won "a cyan square" by drawing a
    # cyan blob at half strength, which hardening then erased (docs/method.md, session 30).
    contest_hardened: bool = True
    # Per image: the piece where the image shows what the prompt names (locate.py: the text
    # without the word that says what it should become, "a circle" for "a yellow circle",
    # and the piece whose hiding lowers the CLIP's score of it most) wins the contest. Why:
    # the CLIP binds colour to shape weakly, and the contest gave "a yellow circle" to the
    # triangle beside it (docs/method.md, session 30). False: the contest alone decides.
    locate_named: bool = True
    # The contest's winner trained contest_steps steps on its own region and carries on, so
    # the run skips as many of its remaining steps (see trainer._contest_credit).
    credit_contest: bool = True
    # Global direction: start from ``prior_scale`` times the CLIP-retrieval prior (prior.py):
    # the mean w of the ``prior_top`` of ``prior_samples`` generator samples the CLIP ranks
    # highest for the prompt, minus the mean of all. 0 samples switches it off (start near 0,
    # the paper's). Scale 2: a masked recolour at the fine layers needs about twice the move
    # that reaches the target's mean w with every layer (measured; see prior.py).
    prior_samples: int = 1024
    prior_top: int = 64
    prior_scale: float = 2.0
    # The prior's form (prior.retrieval_prior): "mean", best minus all; "matched", each best
    # sample less its look-alike among the low scorers: the prompt's change and little else.
    # None = automatic (prior_form_for): matched as the axis a held direction keeps to
    # (along_prior), mean as a free start (docs/method.md, "Direction prior").
    prior_form: str | None = None
    # Per image, with the prior and masks ("hold to the prior"): the direction may only scale
    # the prior, one gain per W+ entry (projected after every step, the region contest's
    # rivals too), so the region is chosen for the generator's own w-direction of the prompt
    # rather than for whatever the CLIP's gradient finds first; just after the region choice
    # an image whose edit (the chosen region's picture) is under free_below of the way to the
    # bank's best samples (fit.MIN_REACH without free_when_short) is freed for the rest of
    # the run. On by default: on fresh faces it made more clean edits than the free
    # direction (it keeps the other parts: a smile no longer recolours the skin), on scenes as
    # many, for a second training of the images still short at the end (free_when_short).
    # Figures: docs/method.md, "Holding the direction to the prior"; the paper preset and
    # --no-hold-to-prior switch it off.
    along_prior: bool = True
    # Per image SS with the prior's start: split every segment piece where that start changes
    # the picture visibly, and start the unchanged halves' masks low (prior_region.py), so a
    # change of shape (long hair over the background, a wider mouth) has a region of its own.
    # None = automatic (prior_region_for): on with along_prior, where it was measured.
    prior_region: bool | None = None
    # ... and a piece whose cells mostly change by at least this share of the picture's split
    # threshold goes whole to the changed half (1.0: only cells past the threshold count).
    # Why: the prior's start repaints a whole background, graded, and the threshold cut it
    # into a changed middle and an unchanged frame or corner that the edit then never
    # selected (docs/method.md, "The prior's region").
    prior_region_graded: float = 0.5
    # With along_prior: an image whose held edit ends short (``free_below``) is trained
    # again as a free edit (the direction not held, same seed) instead of being left
    # unchanged or muddy; the rows that got there keep the held edit. A second training where
    # it fires (1.6-2x the time per edit). Figures: docs/method.md, "Trained again when short".
    free_when_short: bool = True
    # ... "short" meaning under this share of the way to the bank's best samples (None:
    # fit.MIN_REACH, the bar that leaves an image unchanged). 0.9: a held edit that got most
    # but not all of the way (a muddy colour the CLIP half accepts) is trained again too.
    free_below: float | None = 0.9
    # ... and an image whose held edit got at least fit.MIN_REACH of the way keeps it when its
    # free edit is left unchanged, or loses more of what the prompt does not name than it
    # gains of the prompt over the held one (the CLIP's reading; trainer._rows_better_held).
    # Off: it rescued three changes of shape on the tuning faces (the free edit had repainted
    # the face), but on fresh faces it kept three muddy held background recolours and rescued
    # none (a recolour shows in the CLIP's reading of the rest too); docs/method.md.
    keep_held_when_better: bool = False
    # With along_prior: an image freed at the region choice and still under fit.MIN_REACH
    # ten steps later gets back, as soft masks trained for it alone, the layers hardening
    # turned off in the pieces its region kept; they are hardened again half way to the end.
    # Why: held, the masks grew only where the held change helped, often one layer of the
    # named piece, and the freed edit, confined there, stayed at no reach and was trained
    # again from the start (docs/method.md, "Freed images reopened"). False: the freed image
    # keeps the held edit's hardened region.
    reopen_freed: bool = True
    # SS: keep the original pixels outside the selected segments (selectors.composite), in
    # apply and in training once region pruning has chosen the region (from then on the CLIP
    # sees what the user gets; before it, the paper's blend, so the area term does not starve
    # a large region whose change the composite would halve: a background prompt lost its
    # background that way). CAN per prompt: at apply, outside the catalogue clusters region
    # pruning kept (the soft attention masks left a ring of the old colour round objects).
    # False: the paper's blend alone.
    composite: bool = True
    # CAN per prompt, with ``composite``: once pruning has kept some clusters, training sees
    # what apply will give (the composite over them) and the even-change term asks for the
    # same change across them, as SS does over its segments. Why: the kept clusters' change
    # faded near objects, leaving a ring of the old colour wider than the composite's edge
    # band (docs/method.md, "CAN trains on the composite").
    can_trains_on_composite: bool = True
    # SS: once region pruning has chosen, the kept (layer, segment) masks are set to 1 and
    # frozen, and the direction alone trains on: soft masks left a background edit half done
    # (a muddy colour). False: the masks stay soft and trainable (the paper's).
    harden_selection: bool = True
    # Per image: check the prompt fits before editing (fit.py); an image it cannot or need
    # not change is left exactly as it was, with a warning. False: edit whatever the prompt.
    check_fit: bool = True
    # ... including "nothing of it there" (fit.py: the prompt's one-word-less parts all far
    # from the image): an image that lacks what the prompt names is left unchanged. False:
    # the other fit checks only (what it costs and buys: docs/method.md).
    check_absent: bool = True
    # Per prompt: a training sample the scene check finds lacking what the prompt names, or
    # already showing it, adds nothing to the CLIP term (only the area term acts there, so the
    # masks learn to stay off such scenes): trained on every sample, "a red circle" learned
    # to recolour the square of a scene without a circle. False: every sample counts (the
    # paper's). Needs ``check_fit`` (the scene check).
    fit_scenes_only: bool = True
    # A prompt that joins two things ("a red circle on a green background": fit.prompt_clauses)
    # is learned as one edit per thing, applied one over the other: one direction and one set
    # of masks cannot paint two regions two colours (one region won the contest and 0 of 43
    # such prompts succeeded, session 14; docs/method.md). False: one edit for the whole
    # prompt (the paper's). A neutral prompt keeps the prompt whole.
    split_clauses: bool = True
    # The CLIP reads the picture as displayed (clamped to [-1, 1]; clip_model.displayed): on
    # the raw output an edit bought CLIP score with colours past the range, which the user
    # sees clipped (measurements: docs/method.md). False: the raw output (the paper's).
    clip_sees_display: bool = True
    # SS: how segments shrink to coarse layers ("area" the paper's, "max": see selectors.py)
    segment_pool: str = "max"
    weights: LossWeights = field(default_factory=LossWeights)
    progress_every: int = 10
    # bf16 autocast on CUDA (losses and mask maths in float32): None = automatic (auto_bf16)
    bf16: bool | None = None
    # activation recomputation in the blended pass: None = automatic (auto_recompute: CPU at
    # 256 px and up; CUDA at 512 px and up with less than 16 GiB free), or forced on / off
    recompute: bool | None = None
    checkpoint: Path | None = None
    checkpoint_every: int = 100
    catalogue_dir: Path | None = None
    identity_model: Path | None = None  # model_ir_se50.pth, for the optional identity loss

    def prior_form_for(self, held: bool) -> str:
        """The prior's form for a direction held to it or free (``prior_form`` if set)."""
        return self.prior_form or ("matched" if held else "mean")

    def prior_region_for(self, held: bool) -> bool:
        """Whether the pieces are split where the prior's start acts (``prior_region`` if
        set; else with a direction held to the prior)."""
        return held if self.prior_region is None else self.prior_region

    def validate(self, G: Generator) -> None:
        """Refuse a setting out of range, of the wrong kind, or a combination that cannot
        train, with a message naming it, before any work starts."""
        self._validate_texts()
        for name, value, allowed in (("variant", self.variant, VARIANTS),
                                     ("direction", self.direction, DIRECTIONS),
                                     ("mode", self.mode, MODES),
                                     ("prior_form", self.prior_form, (None, *PRIOR_FORMS)),
                                     ("prior_region", self.prior_region, (None, True, False))):
            if value not in allowed:
                raise InputError(f"{name} must be one of {allowed}, got {value!r}")
        self._validate_numbers()
        if self.max_layer is not None and not 1 <= self.max_layer <= len(G.conv_layers):
            raise InputError(f"max_layer must be in 1..{len(G.conv_layers)}")
        if self.select_then_edit is not None:
            finite("select_then_edit", self.select_then_edit, 0.0, 1.0)
            if not self.directional:
                raise InputError("select_then_edit learns the region under the directional "
                                 "CLIP loss: give a neutral prompt and switch directional on")
        if self.free_below is not None:
            finite("free_below", self.free_below, 0.0, 2.0)
        finite("prior_region_graded", self.prior_region_graded, 0.0, 1.0)
        if self.directional and not self.neutral.strip():
            raise InputError("the directional CLIP loss needs a neutral prompt")

    def _validate_texts(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise InputError("prompt is empty: describe the edit, e.g. 'a face with a beard'")
        for name, text in (("prompt", self.prompt), ("neutral prompt", self.neutral)):
            try:  # before training, not after it (saving the edit would fail on it)
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(f"{name} holds a character that cannot be written "
                                 f"({exc.reason} at position {exc.start}); retype it") from exc
            if len(text) > MAX_PROMPT_CHARS:
                raise InputError(f"{name} is {len(text)} characters; at most "
                                 f"{MAX_PROMPT_CHARS} (a CLIP reads 77 tokens at most)")

    def _validate_numbers(self) -> None:
        whole("steps", self.steps, 1, MAX_STEPS)
        whole("batch", self.batch, 1, 4096)
        whole("segments", self.num_segments, 2, 256)
        if self.segment_pieces:
            whole("segment_pieces", self.segment_pieces, 2, 256)
        whole("piece_min_cells", self.piece_min_cells, 0, 256)
        whole("contest_steps", self.contest_steps, 0, MAX_STEPS)
        if self.prior_samples:
            whole("prior_samples", self.prior_samples, 2, 1_000_000)
            whole("prior_top", self.prior_top, 1, self.prior_samples)
            finite("prior_scale", self.prior_scale, 0.0, 100.0)
        finite("truncation", self.truncation, 0.0, 2.0)
        finite("mask_init", self.mask_init, 0.0001, 0.9999)
        if self.lr is not None:
            finite("lr", self.lr, 1e-8, 10.0)
        for name, value in vars(self.weights).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                finite(f"loss weight {name}", value, 0.0, 1e6)
        finite("prune_at", self.prune_at, 0.0, 1.0)
        whole("prune_batches", self.prune_batches, 1, 64)
        finite("prune_tolerance", self.prune_tolerance, 0.0, 0.99)
        finite("prune_image_keep", self.prune_image_keep, 0.0, 1.0)

    def direction_lr(self) -> float:
        """Global offsets are in w-spread units, so one rate suits every generator; the
        mapper's network weights want the usual small network rate."""
        if self.lr is not None:
            return self.lr
        return GLOBAL_LR if self.direction == "global" else NETWORK_LR

    def selector_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return SEGMENT_LR if self.variant == "ss" else ATTENTION_LR


