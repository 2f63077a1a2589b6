"""Named presets: the library's defaults ("coral") and the published method ("paper").

Why presets: every departure from the paper is a measured choice that stays switchable, and a
user (or a reviewer comparing against the paper) must be able to ask for the paper's method in
one word rather than by knowing nine settings. A preset is data: the settings it changes from
``TrainConfig``'s defaults. Every entry point (CLI, nodes, evaluation) builds its config with
``preset_config``; what a user sets explicitly wins over the preset.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..errors import InputError
from .config import LossWeights, TrainConfig

#: settings each preset changes from TrainConfig's (and LossWeights') defaults
PRESETS: dict[str, dict[str, Any]] = {
    # the library's defaults: every measured departure on (docs/history.md has the figures)
    "coral": {},
    # the published method, no departure: the catalogue's clusters as they are, soft masks
    # trained throughout, no region pruning or contest, no direction prior, no composite, no
    # fit check, area-downsampled segments, one area weight for every layer, no even-change
    # term, the CLIP reading the raw output
    "paper": {"segment_pieces": 0, "piece_min_cells": 0,
              "dissolve_boundaries": False, "prune_tolerance": 0.0,
              "contest_steps": 0, "prior_samples": 0, "along_prior": False, "composite": False,
              "harden_selection": False, "check_fit": False, "check_absent": False,
              "can_trains_on_composite": False,
              "fit_scenes_only": False,
              "split_clauses": False,
              "segment_pool": "area", "clip_sees_display": False,
              "weights": {"area_weighting": "uniform", "even_change": 0.0}},
}
DEFAULT_PRESET = "coral"


def preset_config(preset: str = DEFAULT_PRESET, **settings: Any) -> TrainConfig:
    """A TrainConfig for ``preset`` with ``settings`` (TrainConfig fields; ``weights`` may be
    a LossWeights or a dict of its fields) set on top."""
    if preset not in PRESETS:
        raise InputError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    base = dict(PRESETS[preset])
    weights = dict(base.pop("weights", {}))
    given = settings.pop("weights", None)
    if isinstance(given, LossWeights):
        given = {f.name: getattr(given, f.name) for f in dataclasses.fields(given)}
    weights.update(given or {})
    base.update(settings)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(base) - known)
    if unknown:
        raise InputError(f"unknown training setting(s): {', '.join(unknown)}")
    return TrainConfig(**base, weights=LossWeights(**weights))


def preset_defaults(preset: str = DEFAULT_PRESET) -> TrainConfig:
    """The preset's full config (with a placeholder prompt): where entry points read the
    default of each setting they show."""
    return preset_config(preset, prompt="(default)")


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` strings (``coral eval --set``) -> settings for ``preset_config``.

    Why: an ablation on the user's path changes one named setting and nothing else, from the
    command line, without a flag per setting. VALUE is read as JSON when it can be (numbers,
    true / false, null, lists), else as text; ``weights.FIELD=VALUE`` sets a LossWeights field.
    Unknown names are refused here, naming the item; values are checked by the config."""
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"prompt", "weights"}
    known_weights = {f.name for f in dataclasses.fields(LossWeights)}
    settings: dict[str, Any] = {}
    weights: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        weight = name.removeprefix("weights.")
        if weight != name:
            if weight not in known_weights:
                raise InputError(f"--set {item!r}: no loss weight {weight!r}; known: "
                                 f"{', '.join(sorted(known_weights))}")
            weights[weight] = value
        elif name in known:
            settings[name] = value
        else:
            raise InputError(f"--set {item!r}: no training setting {name!r}; known: "
                             f"{', '.join(sorted(known))}")
    if weights:
        settings["weights"] = weights
    return settings
