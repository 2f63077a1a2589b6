"""Checks on a CLIP's configuration and weights before open_clip builds anything from them.

open_clip allocates a model from its configuration (widths, layers, vocabulary) before a single
weight is read, and infers an OpenAI state dict's depth from its key *names*; a 394-byte config
or a 13 MB file whose keys name 1,000 layers then costs gigabytes. So every configuration is
bounded field by field, and the model it describes must not be larger than the weights the file
really holds: nothing is allocated from declared sizes alone.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from ..errors import ModelFormatError

# Generous bounds: every open_clip model (ViT-bigG-14 included) fits inside them.
_INT_BOUNDS = {
    "embed_dim": (1, 8192),
    "vision_cfg.image_size": (8, 1024), "vision_cfg.width": (8, 8192),
    "vision_cfg.patch_size": (1, 256), "vision_cfg.head_width": (1, 1024),
    "vision_cfg.layers": (1, 128),
    "text_cfg.context_length": (2, 1024), "text_cfg.vocab_size": (2, 1_000_000),
    "text_cfg.width": (8, 8192), "text_cfg.heads": (1, 256), "text_cfg.layers": (1, 128),
}
_SLACK = 1.25  # a config may describe at most this many times the file's parameters


def _field(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def check_clip_config(cfg: Any, source: str) -> dict[str, Any]:
    """The model config (open_clip's ``model_cfg``), refused unless every size is a bounded
    integer; returns it unchanged."""
    if not isinstance(cfg, dict):
        raise ModelFormatError(f"{source}: the CLIP config is a {type(cfg).__name__}, not a "
                               "table (expected open_clip's model_cfg)")
    for part in ("vision_cfg", "text_cfg"):
        if not isinstance(cfg.get(part, {}), dict):
            raise ModelFormatError(f"{source}: CLIP config field {part!r} must be a table")
    for dotted, (lo, hi) in _INT_BOUNDS.items():
        value = _field(cfg, dotted)
        if value is None:
            continue
        if dotted == "vision_cfg.layers" and isinstance(value, list):  # ModifiedResNet
            if not value or not all(_is_int(v) and 1 <= v <= 64 for v in value) or \
                    len(value) > 8:
                raise ModelFormatError(f"{source}: CLIP config field {dotted} = {value!r}; "
                                       "expected up to 8 block counts of 1-64")
            continue
        if not _is_int(value) or not lo <= value <= hi:
            raise ModelFormatError(f"{source}: CLIP config field {dotted} = {value!r}; "
                                   f"expected an integer from {lo} to {hi}")
    return cfg


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def min_parameters(cfg: Mapping[str, Any]) -> int:
    """A lower bound on the parameters the config describes (transformer blocks hold at least
    12 width^2 each; the token embedding vocab x width)."""
    total = 0
    vl, vw = _field(cfg, "vision_cfg.layers"), _field(cfg, "vision_cfg.width") or 768
    if _is_int(vl):
        total += 12 * vl * vw * vw
    tl, tw = _field(cfg, "text_cfg.layers") or 12, _field(cfg, "text_cfg.width") or 512
    vocab = _field(cfg, "text_cfg.vocab_size") or 49408
    return total + 12 * tl * tw * tw + vocab * tw


def check_fits_weights(cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                       source: str) -> None:
    """Refuse a config that describes a model larger than the weights in hand."""
    held = sum(int(t.numel()) for t in state.values() if isinstance(t, torch.Tensor))
    need = min_parameters(cfg)
    if need > _SLACK * held + 1_000_000:
        raise ModelFormatError(f"{source}: the CLIP config describes at least {need:,} "
                               f"parameters but the weights hold {held:,}: the config does "
                               "not belong to these weights")


def openai_state_config(state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """The sizes open_clip's OpenAI builder would infer from a state dict (layers are counted
    from key names), as a model config for the checks above."""
    def width(key: str, dim: int) -> int:
        t = state.get(key)
        if not isinstance(t, torch.Tensor) or t.ndim <= dim:
            raise ModelFormatError(f"{source}: not a CLIP state dict (no usable {key!r})")
        return int(t.shape[dim])

    def count(pattern: str) -> int:
        return len({m.group(1) for k in state if (m := re.match(pattern, k))})

    return {"vision_cfg": {"layers": count(r"visual\.transformer\.resblocks\.([^.]+)\."),
                           "width": width("visual.conv1.weight", 0)},
            "text_cfg": {"layers": count(r"transformer\.resblocks\.([^.]+)\."),
                         "width": width("ln_final.weight", 0),
                         "vocab_size": width("token_embedding.weight", 0)}}


def check_finite(state: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """Refuse NaN or infinite weights, naming the first tensor that holds one (such a model
    gives black images or NaN embeddings without any other sign)."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and \
                not bool(torch.isfinite(t).all()):
            raise ModelFormatError(f"{source}: the {what}'s tensor {name!r} holds NaN or "
                                   "infinite values: the file is damaged")
