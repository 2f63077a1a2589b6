"""Presets: the paper's method in one word, in every entry point, with what a user sets
explicitly winning over the preset."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coral_core.editing.edit import Edit
from coral_core.editing.presets import PRESETS, preset_config, preset_defaults
from coral_core.editing.trainer import TrainConfig, train_edit
from coral_core.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


def test_coral_preset_is_the_library_defaults_and_paper_switches_every_departure_off():
    assert preset_defaults("coral") == dataclasses.replace(TrainConfig(prompt="(default)"))
    paper = preset_defaults("paper")
    assert paper.segment_pieces == 0 and paper.piece_min_cells == 0
    assert paper.prune_tolerance == 0 and paper.contest_steps == 0
    assert paper.prior_samples == 0 and not paper.composite and not paper.check_fit
    assert not paper.harden_selection and paper.segment_pool == "area"
    assert paper.weights.area_weighting == "uniform" and paper.weights.even_change == 0
    # every setting a preset names is a real one, so a rename cannot silently drop it
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for changes in PRESETS.values():
        assert set(changes) - {"weights"} <= fields


def test_explicit_settings_win_over_the_preset_and_unknown_ones_are_refused():
    cfg = preset_config("paper", prompt="x", prune_tolerance=0.2, weights={"area": 0.5})
    assert cfg.prune_tolerance == 0.2 and cfg.weights.area == 0.5
    assert cfg.weights.area_weighting == "uniform" and not cfg.composite
    with pytest.raises(InputError, match="preset"):
        preset_config("fancy", prompt="x")
    with pytest.raises(InputError, match="unknown training setting"):
        preset_config("coral", prompt="x", prune_tolerence=0.1)


def test_a_paper_edit_is_the_published_method(G, clip):
    ws = G.mapping_ws(G.z_from_seeds([3, 4]))
    edit = train_edit(G, clip, preset_config("paper", prompt="a red circle", steps=6, batch=2,
                                             seed=1), latents=ws).edit
    assert not edit.composite and "region_pruning" not in edit.info
    assert "prior" not in edit.info and "prompt_fit" not in edit.info
    assert edit.catalogue is not None and edit.catalogue.pieces == 0
    weights = torch.sigmoid(edit.selector.logits)
    assert bool(((weights > 0) & (weights < 1)).all())  # soft masks, nothing hardened
    assert edit.info["config"]["segment_pool"] == "area"


def test_cli_train_takes_a_preset_and_records_it(tmp_path: Path):
    out = tmp_path / "paper.safetensors"
    run = subprocess.run([sys.executable, "-m", "coral_core", "train", "--prompt",
                          "a green background", "--seeds", "3", "--steps", "2",
                          "--preset", "paper", "--prune-tolerance", "0.1", "--absent-check",
                          "--even-change", "0.5", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    config = Edit.load(out).info["config"]
    assert config["composite"] is False and config["segment_pieces"] == 0
    assert config["prune_tolerance"] == 0.1  # set by the user: wins over the preset
    assert config["check_absent"] is True and config["check_fit"] is False  # the same
    weights = Edit.load(out).info["loss_weights"]
    assert weights["even_change"] == 0.5 and weights["area_weighting"] == "uniform"
    assert json.loads(run.stdout[:run.stdout.rindex("}") + 1])["prompt"] == "a green background"


def test_the_cli_parser_and_the_defaults_load_without_torch():
    """`coral --help` and every subcommand's help read their defaults from editing/config.py
    and presets.py, which import no torch (start-up was 1.3 s, all of it torch)."""
    code = ("import sys; from coral_core import cli, editing; from coral_core.editing import "
            "presets; cli.build_parser(); "
            "presets.preset_defaults('paper'); print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_eval_set_items_become_typed_settings_on_top_of_the_preset():
    from coral_core.editing.presets import parse_settings

    settings = parse_settings(["num_segments=12", "composite=false", "lr=null",
                               "segment_pool=area", "only_layers=[5, 6]",
                               "weights.area=0.05", "prior_scale = 1.5"])
    cfg = preset_config("coral", prompt="x", **settings)
    assert cfg.num_segments == 12 and cfg.composite is False and cfg.lr is None
    assert cfg.segment_pool == "area" and cfg.only_layers == [5, 6]
    assert cfg.weights.area == 0.05 and cfg.prior_scale == 1.5
    # a loss weight changed leaves the preset's other weights as they were
    assert preset_config("paper", prompt="x", **parse_settings(["weights.area=0.05"])
                         ).weights.area_weighting == "uniform"
    assert parse_settings([]) == {}


@pytest.mark.parametrize("item, words", [
    ("num_segments", "FIELD=VALUE"), ("=3", "FIELD=VALUE"), ("segmnets=3", "segmnets"),
    ("weights.aera=1", "aera"), ("prompt=a dog", "prompt"), ("weights=1", "'weights'")])
def test_eval_set_items_that_name_no_setting_are_refused_by_name(item, words):
    from coral_core.editing.presets import parse_settings

    with pytest.raises(InputError, match=words):
        parse_settings([item])


def test_coral_eval_set_refuses_what_the_evaluation_sets_per_case():
    from coral_core.commands.world import eval_settings

    assert eval_settings(["num_segments=12"]) == {"num_segments": 12}
    for owned in ("steps=5", "seed=1", "batch=2", "no_masks=true", "variant=can"):
        with pytest.raises(InputError, match="per case"):
            eval_settings([owned])


def test_loss_weights_given_whole_replace_the_presets_and_refusals_list_the_choices():
    from coral_core.editing.config import LossWeights

    mine = LossWeights(area=0.5)
    assert preset_config("paper", prompt="x", weights=mine).weights == mine
    with pytest.raises(InputError, match=r"preset must be one of coral, paper, got 'papr'"):
        preset_config("papr", prompt="x")
    with pytest.raises(InputError, match=r"unknown training setting\(s\): aa, zz$"):
        preset_config("coral", prompt="x", zz=1, aa=2)


def test_eval_set_values_may_hold_equals_signs_and_refusals_list_the_known_names():
    from coral_core.editing.presets import parse_settings

    assert parse_settings(["neutral=a=b"]) == {"neutral": "a=b"}
    with pytest.raises(InputError, match=r"no loss weight 'aera'; known: .*area, .*, "):
        parse_settings(["weights.aera=1"])
    with pytest.raises(InputError, match=r"known: .*num_segments, only_layers, "):
        parse_settings(["segmnets=3"])
