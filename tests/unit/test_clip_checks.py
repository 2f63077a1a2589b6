"""The CLIP file checks that run before open_clip builds anything: what a config or a state dict
may declare, what the refusals say, and that real models' sizes pass."""
from __future__ import annotations

import pytest
import torch

from coral_core.errors import ModelFormatError
from coral_core.formats.clip_checks import (check_clip_config, check_finite, check_fits_weights,
                                            min_parameters, openai_state_config)

# open_clip's largest released model (ViT-bigG-14) and a ModifiedResNet (RN50x64)
BIG_G = {"embed_dim": 1280,
         "vision_cfg": {"image_size": 224, "layers": 48, "width": 1664, "head_width": 104,
                        "patch_size": 14},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1280, "heads": 20,
                      "layers": 32}}
RN50X64 = {"embed_dim": 1024, "vision_cfg": {"image_size": 448, "layers": [3, 15, 36, 10],
                                              "width": 128}}


def test_real_model_configs_pass_unchanged():
    for cfg in (BIG_G, RN50X64, {}, {"vision_cfg": {}, "text_cfg": {}}):
        assert check_clip_config(cfg, "m.json") is cfg


@pytest.mark.parametrize("cfg, words", [
    ([1, 2], "m.json: the CLIP config is a list, not a table"),
    ({"vision_cfg": 3}, "m.json: CLIP config field 'vision_cfg' must be a table"),
    ({"text_cfg": [1]}, "field 'text_cfg' must be a table"),
])
def test_a_config_that_is_not_tables_is_refused(cfg, words):
    with pytest.raises(ModelFormatError, match=words):
        check_clip_config(cfg, "m.json")


@pytest.mark.parametrize("field, value", [
    ("embed_dim", 0), ("embed_dim", 8193), ("embed_dim", 512.0), ("embed_dim", True),
    ("embed_dim", "512"), ("vision_cfg.image_size", 7), ("vision_cfg.image_size", 1025),
    ("vision_cfg.width", 8193), ("vision_cfg.patch_size", 0), ("vision_cfg.patch_size", 257),
    ("vision_cfg.head_width", 1025), ("vision_cfg.layers", 129), ("vision_cfg.layers", 0),
    ("text_cfg.context_length", 1), ("text_cfg.context_length", 1025),
    ("text_cfg.vocab_size", 1_000_001), ("text_cfg.width", 7), ("text_cfg.heads", 257),
    ("text_cfg.heads", 0), ("text_cfg.layers", 129), ("text_cfg.vocab_size", 1),
    ("vision_cfg.width", 7), ("vision_cfg.head_width", 0), ("text_cfg.width", 8193),
    ("text_cfg.layers", 0),
])
def test_every_size_out_of_bounds_is_refused_naming_field_and_range(field, value):
    cfg: dict = {"vision_cfg": {}, "text_cfg": {}}
    node = cfg
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ModelFormatError, match=rf"m\.json: CLIP config field {field} = "
                                               rf".*expected an integer from \d+ to \d+"):
        check_clip_config(cfg, "m.json")


@pytest.mark.parametrize("field, value", [
    ("embed_dim", 1), ("embed_dim", 8192), ("vision_cfg.image_size", 8),
    ("vision_cfg.image_size", 1024), ("vision_cfg.patch_size", 256),
    ("vision_cfg.head_width", 1024), ("vision_cfg.layers", 128), ("vision_cfg.layers", 1),
    ("text_cfg.context_length", 2), ("text_cfg.vocab_size", 1_000_000), ("text_cfg.width", 8),
    ("text_cfg.width", 8192), ("text_cfg.heads", 256), ("text_cfg.layers", 128),
    ("vision_cfg.width", 8)])
def test_sizes_at_the_bounds_pass(field, value):
    parent, _, leaf = field.rpartition(".")
    cfg: dict = {parent: {leaf: value}} if parent else {leaf: value}
    assert check_clip_config(cfg, "m.json") is cfg


@pytest.mark.parametrize("layers, ok", [
    ([3, 4, 6, 3], True), ([1] * 8, True), ([64], True), ([], False), ([1] * 9, False),
    ([0, 2], False), ([65], False), ([True, 2], False), ([2.0], False)])
def test_resnet_block_counts(layers, ok):
    cfg = {"vision_cfg": {"layers": layers}}
    if ok:
        assert check_clip_config(cfg, "m.json") is cfg
    else:
        with pytest.raises(ModelFormatError, match=r"m\.json: CLIP config field "
                                                   r"vision_cfg\.layers = .*up to 8 block "
                                                   r"counts of 1-64"):
            check_clip_config(cfg, "m.json")


def test_a_resnet_config_still_has_its_other_sizes_checked():
    cfg = {**RN50X64, "text_cfg": {"width": 9000}}
    with pytest.raises(ModelFormatError, match=r"text_cfg\.width = 9000"):
        check_clip_config(cfg, "m.json")


def test_a_config_naming_no_sizes_describes_open_clips_default_text_tower():
    # 12 blocks of 12 x 512^2 plus a 49,408-token embedding of width 512; no vision blocks
    assert min_parameters({}) == 12 * 12 * 512 * 512 + 49408 * 512
    assert min_parameters({"vision_cfg": {"layers": 2}}) == \
        min_parameters({}) + 12 * 2 * 768 * 768
    assert min_parameters({"vision_cfg": {"layers": [3, 4]}}) == min_parameters({})
    assert min_parameters({"vision_cfg": {"layers": 2, "width": 10},
                           "text_cfg": {"layers": 1, "width": 20, "vocab_size": 30}}) == \
        12 * 2 * 100 + 12 * 400 + 30 * 20


def test_a_config_larger_than_its_weights_is_refused_at_the_slack_and_not_before():
    cfg = {"vision_cfg": {"layers": 10, "width": 300},
           "text_cfg": {"layers": 1, "width": 300, "vocab_size": 1000}}
    need = min_parameters(cfg)
    assert need == 12_180_000
    held = (need - 1_000_000) * 4 // 5  # 1.25 x held + 1,000,000 == need exactly
    state = {"a": torch.empty(held - 5, dtype=torch.uint8), "b": torch.empty(5),
             "note": "not a tensor"}
    check_fits_weights(cfg, state, "clip.pt")  # exactly at the limit: accepted
    state["b"] = torch.empty(4)
    with pytest.raises(ModelFormatError, match=r"clip\.pt: the CLIP config describes at "
                                               r"least 12,180,000 parameters but the weights "
                                               r"hold 8,943,999: the config does not belong "
                                               r"to these weights"):
        check_fits_weights(cfg, state, "clip.pt")


def _openai_state(vision_blocks: int, text_blocks: int) -> dict:
    state = {"visual.conv1.weight": torch.zeros(64, 3, 2, 2), "ln_final.weight": torch.zeros(32),
             "token_embedding.weight": torch.zeros(100, 32)}
    for i in range(vision_blocks):
        for part in ("attn.in_proj_weight", "ln_1.weight"):
            state[f"visual.transformer.resblocks.{i}.{part}"] = torch.zeros(1)
    for i in range(text_blocks):
        for part in ("attn.in_proj_weight", "mlp.c_fc.weight"):
            state[f"transformer.resblocks.{i}.{part}"] = torch.zeros(1)
    return state


def test_an_openai_state_dict_gives_the_sizes_open_clip_would_build():
    assert openai_state_config(_openai_state(4, 3), "ViT.pt") == {
        "vision_cfg": {"layers": 4, "width": 64},
        "text_cfg": {"layers": 3, "width": 32, "vocab_size": 100}}


@pytest.mark.parametrize("key, value", [("visual.conv1.weight", None),
                                        ("ln_final.weight", torch.tensor(3.0)),
                                        ("token_embedding.weight", "x")])
def test_a_state_dict_without_the_sizes_open_clip_reads_is_refused(key, value):
    state = _openai_state(1, 1)
    if value is None:
        del state[key]
    else:
        state[key] = value
    with pytest.raises(ModelFormatError, match=rf"ViT\.pt: not a CLIP state dict \(no usable "
                                               rf"'{key}'\)"):
        openai_state_config(state, "ViT.pt")


def test_weights_with_nan_or_inf_are_refused_naming_the_first_bad_tensor():
    good = {"a": torch.ones(3), "n": torch.tensor([1, 2]), "s": "text"}
    check_finite(good, "g.pt", "generator")
    for bad_value in (float("nan"), float("inf"), float("-inf")):
        state = {**good, "w1": torch.tensor([0.0, bad_value]), "w2": torch.tensor([bad_value])}
        with pytest.raises(ModelFormatError, match=r"g\.pt: the generator's tensor 'w1' holds "
                                                   r"NaN or infinite values"):
            check_finite(state, "g.pt", "generator")
