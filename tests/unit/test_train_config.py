"""A training config as a user fills it in: every setting refused by name outside its range
(and accepted at its bounds), combinations that cannot train refused before any work, and
the learning rates and L2 weight each form gets."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from coral_core.editing.config import (ATTENTION_LR, GLOBAL_LR, MAX_PROMPT_CHARS, NETWORK_LR,
                                       SEGMENT_LR, LossWeights, TrainConfig)
from coral_core.errors import InputError
from coral_core.validate import MAX_STEPS

G = SimpleNamespace(conv_layers=[object()] * 9)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"prompt": "a red square", **kw})


def test_the_defaults_validate() -> None:
    _cfg().validate(G)


@pytest.mark.parametrize("field, good", [
    ("steps", [1, MAX_STEPS]), ("batch", [1, 4096]), ("num_segments", [2, 256]),
    ("segment_pieces", [0, 2, 256]), ("piece_min_cells", [0, 256]),
    ("contest_steps", [0, MAX_STEPS]), ("prior_samples", [0, 2, 1_000_000]),
    ("prior_top", [1, 1024]), ("prior_scale", [0.0, 100.0]),
    ("truncation", [0.0, 2.0]), ("mask_init", [0.0001, 0.9999]), ("lr", [None, 1e-8, 10.0]),
    ("prune_at", [0.0, 1.0]), ("prune_batches", [1, 64]), ("prune_tolerance", [0.0, 0.99]),
    ("prune_image_keep", [0.0, 1.0]), ("max_layer", [None, 1, 9]),
])
def test_each_setting_is_accepted_at_its_bounds(field, good) -> None:
    for value in good:
        kw = {field: value}
        if field == "prior_samples" and value == 2:
            kw["prior_top"] = 1
        _cfg(**kw).validate(G)


@pytest.mark.parametrize("field, bad, named", [
    ("steps", 0, "steps"), ("steps", MAX_STEPS + 1, "steps"), ("steps", 2.5, "steps"),
    ("steps", True, "steps"), ("batch", 0, "batch"), ("batch", 4097, "batch"),
    ("num_segments", 1, "segments"), ("num_segments", 257, "segments"),
    ("segment_pieces", 1, "segment_pieces"), ("segment_pieces", 257, "segment_pieces"),
    ("piece_min_cells", -1, "piece_min_cells"), ("piece_min_cells", 257, "piece_min_cells"),
    ("contest_steps", -1, "contest_steps"), ("contest_steps", MAX_STEPS + 1, "contest_steps"),
    ("prior_samples", 1, "prior_samples"), ("prior_samples", 1_000_001, "prior_samples"),
    ("prior_top", 0, "prior_top"), ("prior_top", 1025, "prior_top"),
    ("prior_scale", -0.1, "prior_scale"), ("prior_scale", 100.5, "prior_scale"),
    ("truncation", -0.1, "truncation"), ("truncation", 2.1, "truncation"),
    ("truncation", float("nan"), "truncation"), ("mask_init", 0.0, "mask_init"),
    ("mask_init", 1.0, "mask_init"), ("lr", 0.0, "lr"), ("lr", 11.0, "lr"),
    ("lr", float("inf"), "lr"), ("prune_at", 1.5, "prune_at"), ("prune_at", -0.1, "prune_at"),
    ("prune_batches", 0, "prune_batches"), ("prune_batches", 65, "prune_batches"),
    ("prune_tolerance", 1.0, "prune_tolerance"), ("prune_tolerance", -0.1, "prune_tolerance"),
    ("prune_image_keep", 1.1, "prune_image_keep"), ("max_layer", 0, "max_layer"),
    ("max_layer", 10, "max_layer"), ("variant", "xx", "variant"),
    ("direction", "sideways", "direction"), ("mode", "per_batch", "mode"),
    ("select_then_edit", 1.5, "select_then_edit"),
    ("select_then_edit", -0.1, "select_then_edit"), ("prune_image_keep", -0.1, "prune_image_keep"),
    ("free_below", -0.1, "free_below"), ("free_below", float("nan"), "free_below"),
    ("free_below", 2.5, "free_below"),
])
def test_a_setting_out_of_range_is_refused_by_name(field, bad, named) -> None:
    with pytest.raises(InputError) as err:
        _cfg(**{field: bad, "neutral": "n", "directional": True}).validate(G)
    assert str(err.value).startswith(named + " ")


def test_prior_settings_are_only_checked_when_the_prior_is_on() -> None:
    _cfg(prior_samples=0, prior_top=0, prior_scale=-1.0).validate(G)


@pytest.mark.parametrize("name, value", [("clip", -1.0), ("area", float("nan")),
                                         ("tv", 1e6 + 0.5), ("clip_on_edit", float("inf"))])
def test_a_bad_loss_weight_is_refused_by_name(name, value) -> None:
    with pytest.raises(InputError, match=f"loss weight {name}"):
        _cfg(weights=LossWeights(**{name: value})).validate(G)


def test_prompts_are_refused_when_empty_too_long_or_unwritable() -> None:
    for empty in ("", "   "):
        with pytest.raises(InputError) as err:
            _cfg(prompt=empty).validate(G)
        assert str(err.value) == "prompt is empty: describe the edit, e.g. 'a face with a beard'"
    _cfg(prompt="x" * MAX_PROMPT_CHARS).validate(G)
    with pytest.raises(InputError, match=f"prompt is {MAX_PROMPT_CHARS + 1} characters"):
        _cfg(prompt="x" * (MAX_PROMPT_CHARS + 1)).validate(G)
    with pytest.raises(InputError, match="neutral prompt is"):
        _cfg(neutral="y" * (MAX_PROMPT_CHARS + 1)).validate(G)
    with pytest.raises(InputError, match="prompt holds a character .* at position 2"):
        _cfg(prompt="a \ud800 square").validate(G)
    with pytest.raises(InputError, match="neutral prompt holds"):
        _cfg(neutral="\udfff").validate(G)


def test_combinations_that_cannot_train_are_refused() -> None:
    with pytest.raises(InputError) as err:
        _cfg(directional=True).validate(G)
    assert str(err.value) == "the directional CLIP loss needs a neutral prompt"
    with pytest.raises(InputError, match="needs a neutral prompt"):
        _cfg(directional=True, neutral="   ").validate(G)
    with pytest.raises(InputError) as err:
        _cfg(select_then_edit=0.5, neutral="a green square").validate(G)
    assert str(err.value) == ("select_then_edit learns the region under the directional CLIP "
                              "loss: give a neutral prompt and switch directional on")
    _cfg(select_then_edit=1.0, neutral="n", directional=True).validate(G)
    _cfg(select_then_edit=0.5, neutral="a green square", directional=True).validate(G)
    _cfg(select_then_edit=0.0, neutral="n", directional=True).validate(G)


def test_each_form_gets_its_learning_rates_unless_one_is_given() -> None:
    assert (_cfg().direction_lr(), _cfg().selector_lr()) == (GLOBAL_LR, SEGMENT_LR)
    mapper_can = _cfg(direction="mapper", variant="can")
    assert (mapper_can.direction_lr(), mapper_can.selector_lr()) == (NETWORK_LR, ATTENTION_LR)
    given = dataclasses.replace(mapper_can, lr=0.123)
    assert (given.direction_lr(), given.selector_lr()) == (0.123, 0.123)


def test_the_l2_weight_follows_the_direction_form_unless_given() -> None:
    assert LossWeights().l2_for("global") == 0.0001
    assert LossWeights().l2_for("mapper") == 0.8
    assert LossWeights(l2=0.5).l2_for("mapper") == 0.5
    assert LossWeights(l2=0.0).l2_for("global") == 0.0
    weights = LossWeights(area=0.3)
    record = weights.to_dict()
    assert record["area"] == 0.3 and record["l2"] is None
    record["area"] = 9.0
    assert weights.area == 0.3  # the record is a copy
