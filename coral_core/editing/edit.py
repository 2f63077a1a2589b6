"""A learned CORAL edit (direction + region selector), and its ``.safetensors`` file.

Everything needed to re-apply the edit is in the file: the direction (or mapper weights), the
selector (SS logits with the segment catalogue they index, or the CAN heads), and for per-image
edits the latents they were trained on. Metadata records the generator fingerprint, so applying
an edit to another generator fails with a clear message instead of producing garbage.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import EditMismatchError, ModelFormatError
from ..formats.integrity import HASH_KEY, read_safetensors, write_safetensors
from ..stylegan import Generator
from .blend import mask_policy
from .catalogue import SegmentCatalogue
from .config import DIRECTIONS, MODES, VARIANTS  # noqa: F401 (their home: config.py)
from .directions import GlobalDirection, LatentMapper
from .fit import SceneCheck
from .selectors import AttentionSelector, SegmentSelector, weighted_region

EDIT_FORMAT = "coral-edit"
EDIT_VERSION = "2"  # 2: content hash required (formats/integrity.py)
READABLE_EDIT_VERSIONS = ("1", "2")


@dataclass
class Edit:
    variant: str
    direction_form: str
    mode: str
    prompt: str
    neutral: str
    direction: GlobalDirection | LatentMapper
    selector: SegmentSelector | AttentionSelector
    generator_fingerprint: str
    resolution: int
    num_ws: int
    w_dim: int
    clip_model_id: str = ""
    catalogue: SegmentCatalogue | None = None
    segments: torch.Tensor | None = None  # supplied segments [B, K, r, r]
    latents: torch.Tensor | None = None   # per-image edits: the W+ codes trained on
    max_layer: int | None = None
    only_layers: list[int] | None = None
    no_masks: bool = False
    composite: bool = False  # keep the original pixels outside the selected segments
    info: dict[str, Any] = field(default_factory=dict)
    # per prompt: what a scene must show for the edit to act (apply leaves the rest alone),
    # and the fingerprint of the CLIP whose embeddings it holds
    scene_check: SceneCheck | None = None
    scene_check_clip: str = ""
    # a prompt that joins two things: the edit of the next one, laid over this one at apply
    # (trainer._train_clauses); or, of the same prompt, the edit trained again free for the
    # images a held edit fell short on (trainer.free_when_short); its file keeps it under
    # CLAUSE_PREFIX
    then: "Edit | None" = None

    def chain(self) -> list["Edit"]:
        """This edit and the clauses' edits that follow it, in the order apply lays them."""
        links: list[Edit] = []
        link: Edit | None = self
        while link is not None:
            links.append(link)
            link = link.then
        return links

    # ---- use -------------------------------------------------------------------------------
    def check_generator(self, G: Generator, source: str = "edit") -> None:
        if G.fingerprint() != self.generator_fingerprint:
            raise EditMismatchError(
                f"{source}: this edit was trained for generator {self.generator_fingerprint} "
                f"({self.resolution}px, {self.num_ws} W+ entries) but the loaded generator is "
                f"{G.fingerprint()} ({G.img_resolution}px, {G.num_ws}); load the generator "
                "the edit was made with")

    def rows(self) -> int:
        """1 for edits that apply to any latent; B for per-image edits of B images."""
        if isinstance(self.direction, GlobalDirection):
            return int(self.direction.delta.shape[0])
        if isinstance(self.selector, SegmentSelector):
            return int(self.selector.logits.shape[0])
        return 1

    def check_latents(self, ws: torch.Tensor, transfer: bool = False) -> bool:
        """A per-image edit belongs to the latents it was trained on. Refuse others unless
        ``transfer`` (then the caller should say so); True when the edit is being transferred.
        """
        if self.latents is None:
            return False
        same = tuple(ws.shape) == tuple(self.latents.shape) and torch.allclose(
            ws.detach().float().cpu(), self.latents.float().cpu(), atol=1e-5)
        if same:
            return False
        if not transfer:
            raise EditMismatchError(
                f"this per-image edit was trained on {self.latents.shape[0]} particular "
                "latents and these are different ones; apply it to the latents it was trained "
                "on, train a per-prompt edit, or ask to transfer it (--transfer / the Apply "
                "node's 'transfer per-image edit' switch)")
        return True

    def check_batch(self, batch: int) -> None:
        rows = self.rows()
        if rows not in (1, batch):
            raise EditMismatchError(
                f"per-image edit holds {rows} directions but {batch} latents were given; "
                "pass the same number of latents, or train a per-prompt edit")

    def row(self, i: int) -> "Edit":
        """The edit of image i of a per-image edit, as a one-row edit (applies to any latent);
        every link of its chain (``then``: a second clause, or the images trained again free)
        gives its own row i."""
        import copy

        rows = self.rows()
        if not 0 <= i < rows:
            raise EditMismatchError(f"edit has {rows} rows; index {i} is out of range")
        if rows == 1:
            return self
        out = copy.deepcopy(self)
        with torch.no_grad():
            if isinstance(out.direction, GlobalDirection):
                out.direction.delta = nn.Parameter(out.direction.delta[i:i + 1].clone(),
                                                   requires_grad=False)
            if isinstance(out.selector, SegmentSelector):
                out.selector.logits = nn.Parameter(out.selector.logits[i:i + 1].clone(),
                                                   requires_grad=False)
        if out.latents is not None:
            out.latents = out.latents[i:i + 1].clone()
        if out.segments is not None and out.segments.shape[0] > 1:
            out.segments = out.segments[i:i + 1].clone()
        if self.then is not None:
            out.then = self.then.row(i) if self.then.rows() > 1 else copy.deepcopy(self.then)
        return out

    def delta(self, ws: torch.Tensor) -> torch.Tensor:
        self.check_batch(ws.shape[0])
        return self.direction(ws).expand(ws.shape[0], -1, -1)

    def masks(self, G: Generator, features: list[torch.Tensor],
              threshold: float | None = None) -> list[torch.Tensor | None]:
        """Per-layer masks for images whose original-pass features are given."""
        if isinstance(self.selector, AttentionSelector):
            clusters = self.catalogue.segments(features) \
                if self.selector.cluster_gate is not None and self.catalogue is not None else None
            masks: list[torch.Tensor | None] = list(self.selector.masks(features, clusters))
        else:
            segs = self.segments_for(features)
            masks = list(self.selector.masks(G, segs))
        return mask_policy(masks, no_masks=self.no_masks, only_layers=self.only_layers,
                           max_layer=self.max_layer, threshold=threshold)

    def region(self, G: Generator, features: list[torch.Tensor],
               original: torch.Tensor | None = None) -> torch.Tensor | None:
        """[B, 1, H, W] where the final composite keeps the edit (its edges snapped to the
        colours of ``original`` when given); None: everywhere."""
        if not self.composite or self.no_masks:
            return None
        if isinstance(self.selector, AttentionSelector):  # CAN: the clusters pruning kept
            gate = self.selector.cluster_gate
            if gate is None or self.catalogue is None:
                return None
            return weighted_region(gate, self.catalogue.segments(features), G.img_resolution,
                                   original)
        if not isinstance(self.selector, SegmentSelector):
            return None
        layers = [i for i in range(1, len(G.conv_layers) + 1)
                  if (self.only_layers is None or i in self.only_layers)
                  and (self.max_layer is None or i <= self.max_layer)]
        return self.selector.region(self.segments_for(features), G.img_resolution, layers,
                                    original)

    def feature_layers_needed(self, G: Generator) -> int:
        """How far the original pass must run for this edit's masks."""
        if isinstance(self.selector, AttentionSelector):
            needed = self.max_layer or len(G.conv_layers)
            if self.selector.cluster_gate is not None and self.catalogue is not None:
                needed = max(needed, self.catalogue.layer)
            return needed
        if self.segments is not None:
            return 0
        assert self.catalogue is not None
        return self.catalogue.layer

    def segments_for(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.segments is not None:
            b = features[0].shape[0]
            if self.segments.shape[0] not in (1, b):
                raise EditMismatchError(f"edit holds segments for {self.segments.shape[0]} "
                                        f"images but {b} latents were given")
            return self.segments.to(features[0].device).expand(b, -1, -1, -1)
        assert self.catalogue is not None
        return self.catalogue.segments(features)

    def to(self, device: torch.device | str) -> "Edit":
        self.direction.to(device)
        self.selector.to(device)
        return self

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.prompt, "variant": self.variant,
                               "direction": self.direction_form, "mode": self.mode}
        out.update({k: self.info[k] for k in ("selection", "final_losses", "mask_area",
                                               "steps", "wall_seconds", "partial", "warnings")
                    if k in self.info})
        clauses = list(dict.fromkeys(link.prompt for link in self.chain()))  # a link trained
        if len(clauses) > 1:  # again free (trainer.free_when_short) is no clause of its own
            out["clauses"] = clauses
        return out

    # ---- file ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta, tensors = self._file_parts()
        links = self.chain()[1:]
        if len(links) >= MAX_CLAUSES:
            raise ModelFormatError(f"{path}: an edit of {len(links) + 1} clauses; at most "
                                   f"{MAX_CLAUSES} are kept")
        if links:
            metas = []
            for i, link in enumerate(links, 1):
                link_meta, link_tensors = link._file_parts()
                metas.append(link_meta)
                tensors.update({f"{CLAUSE_PREFIX}{i}.{k}": v.clone()  # none shares memory
                                for k, v in link_tensors.items()})
            meta["clauses"] = json.dumps(metas)
        bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
        if bad:
            raise ModelFormatError(f"{path}: refusing to save an edit with non-finite values "
                                   f"in {bad[:3]} (the training diverged)")
        return write_safetensors(path, tensors, meta)

    def _file_parts(self) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
        """This edit alone as file metadata and tensors (its chain's links not included)."""
        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.direction.state_dict().items():
            tensors[f"direction.{k}"] = v
        for k, v in self.selector.state_dict().items():
            tensors[f"selector.{k}"] = v
        if self.catalogue is not None:
            tensors["catalogue.centres"] = self.catalogue.centres
        if isinstance(self.selector, AttentionSelector) and self.selector.cluster_gate is not None:
            tensors["cluster_gate"] = self.selector.cluster_gate
        if self.segments is not None:
            tensors["segments"] = self.segments
        if self.latents is not None:
            tensors["latents"] = self.latents
        if self.scene_check is not None:
            tensors.update({f"{SCENE_CHECK_PREFIX}{k}": v
                            for k, v in self.scene_check.tensors().items()})
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous()
                   for k, v in tensors.items()}
        meta = {
            "format": EDIT_FORMAT, "format_version": EDIT_VERSION,
            "prompt": self.prompt, "neutral_prompt": self.neutral, "variant": self.variant,
            "direction": self.direction_form, "mode": self.mode,
            "generator_fingerprint": self.generator_fingerprint,
            "resolution": str(self.resolution), "num_ws": str(self.num_ws),
            "w_dim": str(self.w_dim), "clip_model": self.clip_model_id,
            "max_layer": "" if self.max_layer is None else str(self.max_layer),
            "only_layers": json.dumps(self.only_layers),
            "no_masks": "1" if self.no_masks else "",
            "composite": "1" if self.composite else "",
            "segment_pool": getattr(self.selector, "pool", ""),
            "catalogue_id": self.catalogue.id() if self.catalogue is not None else "",
            "catalogue_layer": str(self.catalogue.layer) if self.catalogue is not None else "",
            "catalogue_pieces": str(self.catalogue.pieces)
            if self.catalogue is not None else "",
            "catalogue_absorb": str(self.catalogue.absorb)
            if self.catalogue is not None else "",
            "catalogue_dissolve": "1" if self.catalogue is not None and self.catalogue.dissolve
            else "",
            "can_channels": json.dumps(getattr(self.selector, "channels", [])),
            "info": json.dumps(self.info, default=str),
            "scene_check_clip": self.scene_check_clip,
        }
        return meta, tensors

    @classmethod
    def load(cls, path: str | Path) -> "Edit":
        """Read and verify an edit file (header, content hash, metadata against tensors)."""
        from ..formats.loader import file_fields_checked

        path = Path(path)
        with file_fields_checked(path, "edit"):
            return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> "Edit":
        meta, tensors = read_safetensors(path, "edit", require_hash=False)
        # fresh copies: a tensor read at an odd offset of the file takes another kernel path
        # and applied a few 1e-6 away from the edit that was saved (found when a longer
        # header moved the data)
        tensors = {k: v.clone() for k, v in tensors.items()}
        if meta.get("format") != EDIT_FORMAT:
            raise ModelFormatError(f"{path}: not a CoralStyleCLIP edit (no '{EDIT_FORMAT}' "
                                   "metadata)")
        version = meta.get("format_version")
        if version not in READABLE_EDIT_VERSIONS:
            raise ModelFormatError(f"{path}: edit format version {version!r} is not supported "
                                   f"(this version reads {', '.join(READABLE_EDIT_VERSIONS)}); "
                                   "update ComfyUI-CoralStyleCLIP")
        if version != "1" and HASH_KEY not in meta:
            raise ModelFormatError(f"{path}: edit without its content hash: tampered or corrupt")
        head = cls._from_parts(meta, {k: v for k, v in tensors.items()
                                      if not k.startswith(CLAUSE_PREFIX)}, path)
        links = _clause_metas(meta, path)
        unknown = {k.split(".")[0] for k in tensors if k.startswith(CLAUSE_PREFIX)} - {
            f"{CLAUSE_PREFIX}{i}" for i in range(1, len(links) + 1)}
        if unknown:
            raise ModelFormatError(f"{path}: tensors of clauses {sorted(unknown)[:3]} that the "
                                   "edit's metadata does not describe")
        last = head
        for i, link_meta in enumerate(links, 1):
            prefix = f"{CLAUSE_PREFIX}{i}."
            last.then = cls._from_parts(link_meta, {k[len(prefix):]: v for k, v in tensors.items()
                                                    if k.startswith(prefix)}, path)
            last = last.then
        return head

    @classmethod
    def _from_parts(cls, meta: dict[str, str], tensors: dict[str, torch.Tensor], path: Path
                    ) -> "Edit":
        """One edit (no chain) from its checked metadata and tensors."""
        _check_edit_meta(meta, tensors, path)
        num_ws, w_dim = int(meta["num_ws"]), int(meta["w_dim"])
        direction = _direction_from(meta, tensors, path, num_ws, w_dim)
        selector = _selector_from(meta, tensors, path, num_ws)
        catalogue = None
        if "catalogue.centres" in tensors:
            catalogue = SegmentCatalogue(tensors["catalogue.centres"],
                                         _meta_int(meta, "catalogue_layer", path, 1, num_ws),
                                         meta["generator_fingerprint"],
                                         int(meta.get("catalogue_pieces") or 0),
                                         _meta_int(meta, "catalogue_absorb", path, 0, 4096)
                                         if meta.get("catalogue_absorb") else 0,
                                         bool(meta.get("catalogue_dissolve")))
        return cls(variant=meta["variant"], direction_form=meta["direction"],
                   mode=meta["mode"], prompt=meta["prompt"], neutral=meta["neutral_prompt"],
                   direction=direction.train(False).requires_grad_(False),
                   selector=selector.train(False).requires_grad_(False),
                   generator_fingerprint=meta["generator_fingerprint"],
                   resolution=int(meta["resolution"]), num_ws=num_ws, w_dim=w_dim,
                   clip_model_id=meta.get("clip_model", ""), catalogue=catalogue,
                   segments=tensors.get("segments"), latents=tensors.get("latents"),
                   max_layer=_meta_int(meta, "max_layer", path, 1, num_ws)
                   if meta.get("max_layer") else None,
                   only_layers=_meta_ints(meta, "only_layers", path, 1, num_ws)
                   if meta.get("only_layers") not in (None, "", "null") else None,
                   no_masks=bool(meta.get("no_masks")),
                   composite=bool(meta.get("composite")),
                   info=_meta_info(meta, path),
                   scene_check=_scene_check_from(meta, tensors, path),
                   scene_check_clip=meta.get("scene_check_clip", ""))


def _direction_from(meta: dict[str, str], tensors: dict[str, torch.Tensor], path: Path,
                    num_ws: int, w_dim: int) -> GlobalDirection | LatentMapper:
    """The edit's direction module, built from its checked metadata and loaded strictly."""
    sub = {k[len("direction."):]: v for k, v in tensors.items() if k.startswith("direction.")}
    direction: GlobalDirection | LatentMapper
    if meta["direction"] == "global":
        direction = GlobalDirection(num_ws, w_dim, rows=sub["delta"].shape[0])
        sub.setdefault("scale", torch.ones(w_dim))  # edits before w-spread units
    else:
        direction = LatentMapper(num_ws, w_dim)
        sub.setdefault("spread", torch.ones(w_dim))
    try:
        direction.load_state_dict(sub)
    except RuntimeError as exc:
        raise ModelFormatError(f"{path}: the edit's direction tensors do not fit its "
                               f"metadata ({str(exc)[:300]})") from exc
    return direction


CLAUSE_PREFIX = "clause"  # clause1.direction.delta: the second clause's edit (Edit.then)
MAX_CLAUSES = 8


def _clause_metas(meta: dict[str, str], path: Path) -> list[dict[str, str]]:
    """The metadata of the edits chained after the first (a prompt joining several things)."""
    if not meta.get("clauses"):
        return []
    value = _meta_json(meta, "clauses", path)
    if not isinstance(value, list) or not 1 <= len(value) < MAX_CLAUSES or not all(
            isinstance(m, dict) and all(isinstance(k, str) and isinstance(v, str)
                                        for k, v in m.items()) for m in value):
        raise ModelFormatError(f"{path}: edit metadata clauses is not a list of 1-"
                               f"{MAX_CLAUSES - 1} tables of text fields")
    return value


SCENE_CHECK_PREFIX = "scene_check."
_SCENE_CHECK_KEYS = ("text", "parts", "stats", "part_stats")
_SCENE_CHECK_OPTIONAL = ("part_coefs",)  # edits saved before it read raw part scores
MAX_SCENE_CHECK_PARTS = 64  # prompt_parts gives one per content word


def _scene_check_from(meta: dict[str, str], tensors: dict[str, torch.Tensor], path: Path
                      ) -> SceneCheck | None:
    """The per-prompt edit's scene check (fit.SceneCheck), its shapes checked against each
    other; None when the file has none (edits before it, per-image edits)."""
    sub = {k[len(SCENE_CHECK_PREFIX):]: v for k, v in tensors.items()
           if k.startswith(SCENE_CHECK_PREFIX)}
    if not sub:
        return None
    clip_id = meta.get("scene_check_clip", "")
    text, parts = sub.get("text"), sub.get("parts")
    stats, part_stats, coefs = sub.get("stats"), sub.get("part_stats"), sub.get("part_coefs")
    fits = (set(_SCENE_CHECK_KEYS) <= set(sub) <= set(_SCENE_CHECK_KEYS + _SCENE_CHECK_OPTIONAL)
            and text is not None and parts is not None
            and (coefs is None or tuple(coefs.shape) == (parts.shape[0], parts.shape[0]))
            and stats is not None and part_stats is not None
            and text.ndim == 1 and 1 <= text.numel() <= 8192 and parts.ndim == 2
            and parts.shape[0] <= MAX_SCENE_CHECK_PARTS
            and (parts.shape[0] == 0 or parts.shape[1] == text.numel())
            and tuple(stats.shape) == (2,) and tuple(part_stats.shape) == (parts.shape[0], 3)
            and bool(((part_stats[:, 2] >= 0) & (part_stats[:, 2] < MAX_SCENE_CHECK_PARTS) &
                      (part_stats[:, 2] == part_stats[:, 2].round())).all())
            and 0 < len(clip_id) <= 64 and clip_id.isalnum())
    if not fits:
        raise ModelFormatError(
            f"{path}: the edit's scene check does not fit together (expected {SCENE_CHECK_PREFIX}"
            f"text [D], parts [P<={MAX_SCENE_CHECK_PARTS}, D], stats [2], part_stats [P, 3], "
            "optionally part_coefs [P, P], and a CLIP fingerprint in scene_check_clip)")
    return SceneCheck.from_tensors(sub)


def _selector_from(meta: dict[str, str], tensors: dict[str, torch.Tensor], path: Path,
                   num_ws: int) -> SegmentSelector | AttentionSelector:
    """The edit's selector (segment weights or attention heads), loaded strictly."""
    sel = {k[len("selector."):]: v for k, v in tensors.items() if k.startswith("selector.")}
    selector: SegmentSelector | AttentionSelector
    if meta["variant"] == "ss":
        rows, layers, k = sel["logits"].shape
        selector = SegmentSelector(layers, k, rows)
        pool = meta.get("segment_pool") or "area"
        if pool not in ("area", "max"):
            raise ModelFormatError(f"{path}: edit metadata segment_pool = {pool!r}; "
                                   "expected 'area' or 'max'")
        selector.pool = pool
    else:
        channels = _meta_ints(meta, "can_channels", path, 1, 8192, max_items=num_ws)
        if len(channels) != num_ws - 1:
            raise ModelFormatError(f"{path}: edit metadata can_channels lists {len(channels)} "
                                   f"layers; a generator of {num_ws} W+ entries has "
                                   f"{num_ws - 1} conv layers")
        selector = AttentionSelector(channels)
        selector.cluster_gate = tensors.get("cluster_gate")
    try:
        selector.load_state_dict(sel)
    except RuntimeError as exc:  # else torch's own traceback reaches the user
        raise ModelFormatError(f"{path}: the edit's selector tensors do not fit its "
                               f"metadata ({str(exc)[:300]})") from exc
    return selector


def _meta_json(meta: dict[str, str], key: str, path: Path) -> Any:
    from ..formats.bounded_json import parse_json

    return parse_json(meta.get(key) or "null", str(path), f"edit metadata {key}",
                      max_bytes=1024 * 1024, max_depth=16)


def _meta_int(meta: dict[str, str], key: str, path: Path, lo: int, hi: int) -> int:
    """An integer field of the edit's metadata, within [lo, hi] (hi: the generator's W+
    entries the edit was trained for), or a ModelFormatError naming the field."""
    value = _meta_json(meta, key, path)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ModelFormatError(f"{path}: edit metadata {key} = {meta.get(key)!r}; expected an "
                               f"integer from {lo} to {hi}")
    return value


def _meta_ints(meta: dict[str, str], key: str, path: Path, lo: int, hi: int,
               max_items: int = 64) -> list[int]:
    value = _meta_json(meta, key, path)
    if not isinstance(value, list) or not 1 <= len(value) <= max_items or not all(
            isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in value):
        raise ModelFormatError(f"{path}: edit metadata {key} = {str(meta.get(key))[:80]!r}; "
                               f"expected a list of 1-{max_items} integers from {lo} to {hi}")
    return value


def _meta_info(meta: dict[str, str], path: Path) -> dict[str, Any]:
    value = _meta_json(meta, "info", path) if meta.get("info") else {}
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path}: edit metadata info is a {type(value).__name__}; "
                               "expected a table")
    return value


_REQUIRED_META = ("variant", "direction", "mode", "prompt", "neutral_prompt",
                  "generator_fingerprint", "resolution", "num_ws", "w_dim")


def _check_edit_meta(meta: dict[str, str], tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse tampered or inconsistent metadata before any module is built from it."""
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise ModelFormatError(f"{path}: edit metadata lacks {missing}")
    for key, allowed in (("variant", VARIANTS), ("direction", DIRECTIONS), ("mode", MODES)):
        if meta[key] not in allowed:
            raise ModelFormatError(f"{path}: edit metadata {key}={meta[key]!r} is not one of "
                                   f"{allowed}")
    try:
        num_ws, w_dim, res = int(meta["num_ws"]), int(meta["w_dim"]), int(meta["resolution"])
    except ValueError as exc:
        raise ModelFormatError(f"{path}: edit metadata has a non-integer size ({exc})") from exc
    if not (1 <= num_ws <= 64 and 1 <= w_dim <= 8192 and 4 <= res <= 4096):
        raise ModelFormatError(f"{path}: edit metadata sizes num_ws={num_ws}, w_dim={w_dim}, "
                               f"resolution={res} are outside what any StyleGAN2 has")
    _check_tensors_fit_meta(meta, tensors, path, num_ws, w_dim)


def _check_tensors_fit_meta(meta: dict[str, str], tensors: dict[str, torch.Tensor], path: Path,
                            num_ws: int, w_dim: int) -> None:
    """Refuse tensors whose shapes disagree with the metadata, or that hold NaN/inf."""
    delta = tensors.get("direction.delta")
    if meta["direction"] == "global" and (delta is None or delta.ndim != 3 or
                                          tuple(delta.shape[1:]) != (num_ws, w_dim)):
        raise ModelFormatError(f"{path}: the edit's direction tensor does not match its "
                               f"metadata ([rows, {num_ws}, {w_dim}] expected)")
    logits = tensors.get("selector.logits", torch.empty(0))
    if meta["variant"] == "ss" and (logits.ndim != 3 or logits.shape[1] != num_ws - 1):
        raise ModelFormatError(f"{path}: segment-selection edit without [rows, layers, K] "
                               f"selector logits of {num_ws - 1} layers (the conv layers of a "
                               f"generator of {num_ws} W+ entries)")
    if meta["variant"] == "ss" and "catalogue.centres" not in tensors and \
            "segments" not in tensors:
        raise ModelFormatError(f"{path}: segment-selection edit with neither a catalogue nor "
                               "segments")
    if "catalogue.centres" in tensors and "selector.logits" in tensors:
        try:
            pieces = int(meta.get("catalogue_pieces") or 0)
        except ValueError as exc:
            raise ModelFormatError(f"{path}: edit metadata catalogue_pieces is not an "
                                   f"integer ({exc})") from exc
        count = pieces or int(tensors["catalogue.centres"].shape[0])
        if not 0 <= pieces <= 4096 or tensors["selector.logits"].shape[-1] != count:
            raise ModelFormatError(f"{path}: the edit's selector has "
                                   f"{tensors['selector.logits'].shape[-1]} segments but its "
                                   f"catalogue gives {count} per image")
    gate = tensors.get("cluster_gate")
    if gate is not None and ("catalogue.centres" not in tensors or tuple(gate.shape) != (
            1, tensors["catalogue.centres"].shape[0])):
        raise ModelFormatError(f"{path}: the edit's cluster gate does not fit its catalogue "
                               "([1, K] with the catalogue's K clusters expected)")
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ModelFormatError(f"{path}: tensor {name!r} holds NaN or infinite values")
