"""What `coral models info` and the Load StyleGAN node report about a generator file, and the
truncation centre a rosinality file without `latent_avg` gets."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from fabricate import random_generator, tiny_config, write_nvlabs_pickle, write_rosinality

from coral_core.errors import ModelFormatError
from coral_core.formats import describe, load_generator


def test_describe_reports_every_structural_fact_of_the_file(tmp_path: Path) -> None:
    gen = random_generator(tiny_config(), seed=3)
    path = write_nvlabs_pickle(gen, tmp_path / "g.pkl")
    assert describe(load_generator(path)) == {
        "path": str(path), "format": "nvlabs-pkl", "resolution": 32, "num_ws": 8, "z_dim": 32,
        "w_dim": 32, "mapping_layers": 2, "architecture": "skip", "channel_base": 256,
        "channel_max": 32, "conv_clamp": 256.0, "conv_layers": 7, "parameters": 47787,
        "fingerprint": gen.fingerprint(), "notes": []}


def test_a_rosinality_file_without_latent_avg_gets_the_mean_w_of_many_samples(
        tmp_path: Path) -> None:
    gen = random_generator(tiny_config(), seed=3)
    loaded = load_generator(write_rosinality(gen, tmp_path / "t.pt", training_checkpoint=True))
    assert loaded.notes[-1] == ("no latent_avg in the file; truncation centre estimated from "
                                "10,000 z")
    with torch.no_grad():
        z = torch.randn(40_000, gen.z_dim, generator=torch.Generator().manual_seed(7))
        independent = loaded.generator.mapping(z)[:, 0].mean(0)
    w_avg = loaded.generator.w_avg
    assert w_avg.shape == (gen.w_dim,)
    spread = float(loaded.generator.mapping(z[:1000])[:, 0].std(0).mean())
    # 10,000 samples: the estimate sits within a few standard errors of the true mean
    assert float((w_avg - independent).abs().max()) < 5 * spread / 100
    again = load_generator(write_rosinality(gen, tmp_path / "u.pt", training_checkpoint=True))
    assert torch.equal(again.generator.w_avg, w_avg)  # the same file, the same centre


# ---- the torch checkpoints a user brings, classified by what they hold -----------------------

ROS_NOTE = "rosinality files do not record the mapping lr multiplier; assumed 0.01"
EST_NOTE = "no latent_avg in the file; truncation centre estimated from 10,000 z"


def _ros(gen) -> dict:
    from coral_core.formats import nvlabs_to_rosinality

    return nvlabs_to_rosinality(gen)


@pytest.fixture(scope="module")
def tiny():
    return random_generator(tiny_config(), seed=3)


@pytest.mark.parametrize("extra, fmt", [({}, "rosinality"), ({"args": 1}, "rosinality-train"),
                                        ({"g_optim": {}}, "rosinality-train")])
def test_rosinality_checkpoints_are_named_and_keep_their_latent_avg(tiny, tmp_path, extra,
                                                                    fmt):
    ros = _ros(tiny)
    torch.save({**ros, **extra}, tmp_path / "r.pt")
    loaded = load_generator(tmp_path / "r.pt")
    assert loaded.format == fmt and loaded.notes == [ROS_NOTE]
    assert loaded.path == tmp_path / "r.pt"
    assert torch.equal(loaded.generator.w_avg, ros["latent_avg"])


def test_a_training_checkpoints_argparse_options_are_read_as_data(tiny, tmp_path):
    import argparse

    torch.save({"g_ema": _ros(tiny)["g_ema"], "args": argparse.Namespace(size=32)},
               tmp_path / "train.pt")
    loaded = load_generator(tmp_path / "train.pt")
    assert loaded.format == "rosinality-train" and loaded.notes == [ROS_NOTE, EST_NOTE]


@pytest.mark.parametrize("with_avg", [True, False])
def test_a_bare_rosinality_state_dict_loads(tiny, tmp_path, with_avg):
    ros = _ros(tiny)
    sd = dict(ros["g_ema"], **({"latent_avg": ros["latent_avg"]} if with_avg else {}))
    torch.save(sd, tmp_path / "sd.pt")
    loaded = load_generator(tmp_path / "sd.pt")
    assert loaded.format == "rosinality-state-dict"
    assert loaded.notes == ([ROS_NOTE] if with_avg else [ROS_NOTE, EST_NOTE])
    if with_avg:
        assert torch.equal(loaded.generator.w_avg, ros["latent_avg"])


def test_an_e4e_checkpoint_gives_its_decoder_with_a_note(tiny, tmp_path):
    ros = _ros(tiny)
    sd = {f"decoder.{k}": v for k, v in ros["g_ema"].items()}
    sd["encoder.body.0.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "e4e.pt")
    loaded = load_generator(tmp_path / "e4e.pt")
    assert loaded.format == "e4e-decoder"
    assert loaded.notes == [ROS_NOTE, EST_NOTE,
                            "loaded the generator (decoder) of an e4e/pSp checkpoint"]


def _refused(tmp_path, obj, words: str) -> None:
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(ModelFormatError) as info:
        load_generator(path)
    assert str(info.value).startswith(f"{path}: ")
    assert words in str(info.value)


def test_checkpoints_that_hold_no_generator_are_refused_saying_what_they_are(tiny, tmp_path):
    ros = _ros(tiny)
    decoder_only = {f"decoder.{k}": v for k, v in ros["g_ema"].items()}
    _refused(tmp_path, decoder_only, "unrecognised checkpoint (top-level keys ['decoder.")
    half = {"style.1.weight": torch.zeros(1), "other": torch.zeros(1)}
    _refused(tmp_path, half, "unrecognised checkpoint (top-level keys ['style.1.weight', "
                             "'other']). Supported: NVlabs")
    _refused(tmp_path, {"input.input": torch.zeros(1)}, "unrecognised checkpoint")
    clip = {"visual.proj": torch.zeros(1), "token_embedding.weight": torch.zeros(1)}
    _refused(tmp_path, clip, "this is a CLIP checkpoint, not a StyleGAN generator; load it "
                             "with Load CLIP / --clip")
    for disc in ({"d": {}}, {"convs.0.0.weight": torch.zeros(1)},
                 {"final_linear.0.weight": torch.zeros(1)}):
        _refused(tmp_path, disc, "this looks like a discriminator-only checkpoint (keys [")
    _refused(tmp_path, {"dd": 1, "convs.1.0.weight": torch.zeros(1)}, "unrecognised checkpoint")
    _refused(tmp_path, [1, 2], "holds a list, not a checkpoint dict. Supported: NVlabs")


def test_a_torch_file_that_needs_code_is_refused_with_torchs_first_line(tmp_path):
    import decimal

    path = tmp_path / "code.pt"
    torch.save({"g_ema": decimal.Decimal("1.5")}, path)
    with pytest.raises(ModelFormatError) as info:
        load_generator(path)
    text = str(info.value)
    assert text.startswith(f"{path}: torch file that needs code to load (")
    try:
        torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        said = str(exc).splitlines()[0]
    assert f"({said[:200]})" in text and "\n" not in text  # the first line of torch's refusal
    assert text.endswith("); only weight files are accepted. Supported: NVlabs StyleGAN2/ADA "
                         ".pkl, PTI generator .pt, rosinality .pt, e4e .pt (its decoder), "
                         "CoralStyleCLIP .safetensors")
