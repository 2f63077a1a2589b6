"""A different valid value for any training setting, for tests that vary every field of
``TrainConfig`` or ``LossWeights`` (a run's identity, the run record)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from coral_core.editing.config import LossWeights

# a valid other value for settings whose default is None, a list, a path or a record
OTHER: dict[str, Any] = {
    "lr": 0.01, "max_layer": 3, "only_layers": [1], "select_then_edit": 0.5, "bf16": True,
    "recompute": True, "identity_model": Path("ir_se50.pth"), "l2": 0.5,
    "area_layer_weights": [1.0, 2.0], "checkpoint": Path("run.ckpt.pt"),
    "catalogue_dir": Path("cache"), "weights": LossWeights(area=0.5), "prior_form": "matched",
    "prior_region": True, "free_below": None}


def other_value(name: str, value: Any) -> Any:
    if name in OTHER and value != OTHER[name]:
        return OTHER[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.125
    if isinstance(value, str):
        return value + "x"
    raise AssertionError(f"no other value for {name}={value!r}: add it to OTHER")
