"""A per-prompt run resumes only a checkpoint made with the very same settings: every setting
that changes what a run computes is part of its identity, including ones added later."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from coral_core.editing import run_record
from coral_core.editing.losses import LossWeights
from coral_core.editing.run_record import NOT_IDENTITY
from coral_core.editing.trainer import TrainConfig, train_edit
from coral_core.progress import Reporter
from config_values import other_value as _other

def _identity(cfg: TrainConfig, G, clip) -> str:
    return run_record.run_identity(cfg, G, clip)


def test_every_setting_that_shapes_a_run_is_part_of_its_identity(G, clip):
    base = TrainConfig(prompt="a red circle")
    reference = _identity(base, G, clip)
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_IDENTITY or f.name == "weights":
            continue
        changed = dataclasses.replace(base, **{f.name: _other(f.name, getattr(base, f.name))})
        assert _identity(changed, G, clip) != reference, f.name
    for f in dataclasses.fields(LossWeights):
        weights = dataclasses.replace(base.weights,
                                      **{f.name: _other(f.name, getattr(base.weights, f.name))})
        changed = dataclasses.replace(base, weights=weights)
        assert _identity(changed, G, clip) != reference, f"weights.{f.name}"


def test_where_and_how_often_a_run_reports_or_saves_does_not_change_its_identity(G, clip):
    base = TrainConfig(prompt="a red circle")
    moved = dataclasses.replace(base, checkpoint=Path("elsewhere.pt"), checkpoint_every=7,
                                progress_every=3, catalogue_dir=Path("cache"))
    assert _identity(moved, G, clip) == _identity(base, G, clip)


@pytest.mark.parametrize("change", [{"lr": 0.2}, {"directional": True, "neutral": "a circle"},
                                   {"mask_init": 0.3}, {"only_layers": [2, 3]}])
def test_a_rerun_with_a_new_setting_starts_afresh(G, clip, tmp_path, change):
    ckpt = tmp_path / "run.ckpt.pt"
    cfg = TrainConfig(prompt="a red circle", mode="per_prompt", steps=4, batch=2, seed=1,
                      checkpoint=ckpt, checkpoint_every=1)
    reporter = Reporter(lambda step, total, info: reporter.cancel()
                        if step == 2 and "phase" not in info else None)
    assert train_edit(G, clip, cfg, reporter=reporter).partial and ckpt.is_file()
    rerun = train_edit(G, clip, dataclasses.replace(cfg, **change))
    assert [h["step"] for h in rerun.history] == [1, 2, 3, 4]
    assert "resumed_from_step" not in rerun.edit.info
    assert rerun.edit.info["config"] | change == rerun.edit.info["config"]
