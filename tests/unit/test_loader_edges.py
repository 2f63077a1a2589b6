"""What `coral models info` and the Load StyleGAN node report about a generator file, and the
truncation centre a rosinality file without `latent_avg` gets."""
from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from fabricate import (random_generator, tiny_config, write_nvlabs_pickle, write_pti_generator,
                       write_rosinality)

from coral_core.errors import ModelFormatError
from coral_core.formats import describe, load_generator, sniff


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


# ---- what kind of container a file is, from its first bytes -----------------------------------

def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(name, b"x")
    return path


def _head(tmp_path: Path, head: bytes) -> Path:
    path = tmp_path / "f.bin"
    path.write_bytes(head)
    return path


@pytest.mark.parametrize("head, kind", [
    (struct.pack("<Q", 1) + b"{", "safetensors"),              # 9 bytes: the shortest header
    (struct.pack("<Q", 99_999_999) + b"{}", "safetensors"),
    (struct.pack("<Q", 0) + b"{}", "unknown"),
    (struct.pack("<Q", 100_000_000) + b"{}", "unknown"),
    (struct.pack("<Q", 5) + b"[1]", "unknown"),                # a length, but no JSON object
    (b"\x80\x02" + b"}" * 20, "pickle"), (b"\x80\x05" + b"}" * 20, "pickle"),
    (b"\x80\x01" + b"}" * 20, "unknown"), (b"\x80\x06" + b"}" * 20, "unknown"),
    (b"\x80\x09", "unknown"), (b"\x80", "unknown"), (b"A\x03" + b"x" * 20, "unknown"),
    (b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19" + b"x" * 8, "torch-legacy"),
    (b"PK\x03\x04 not really a zip", "zip")])
def test_the_container_kind_is_read_from_the_first_bytes(tmp_path, head, kind):
    assert sniff(_head(tmp_path, head)) == kind


def test_zip_archives_with_code_are_torchscript(tmp_path):
    assert sniff(_zip(tmp_path / "a.pt", ["archive/data.pkl", "archive/data/0"])) == "zip"
    assert sniff(_zip(tmp_path / "b.pt", ["m/data.pkl", "m/code/__torch__/x.py"])) == \
        "torchscript"
    assert sniff(_zip(tmp_path / "c.pt", ["m/data.pkl", "m/constants.pkl"])) == "torchscript"


# ---- what the loader says of files that are no generator -------------------------------------

def _says(path: Path, words: str) -> None:
    with pytest.raises(ModelFormatError) as info:
        load_generator(path)
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value)


def test_files_that_are_no_generator_are_named_for_what_they_are(tmp_path):
    from safetensors.torch import save_file

    _says(tmp_path / "missing.pt", "no such generator file")
    _says(_head(tmp_path, b""), "the file is empty")
    _says(_head(tmp_path, b"\x80"), "unrecognised file (not a pickle, torch archive or "
                                    "safetensors file). Supported: NVlabs")
    plain = tmp_path / "plain.safetensors"
    save_file({f"t{i}": torch.zeros(1) for i in range(7)}, str(plain))
    _says(plain, "safetensors file without CoralStyleCLIP generator metadata (keys ['t0', "
                 "'t1', 't2', 't3', 't4']). Supported:")
    clip = tmp_path / "clip.safetensors"
    save_file({"visual.proj": torch.zeros(1), "token_embedding.weight": torch.zeros(1)},
              str(clip))
    _says(clip, "this is a CLIP checkpoint (safetensors), not a StyleGAN generator; load it "
                "with Load CLIP / --clip")
    script = _zip(tmp_path / "ViT.pt", ["m/data.pkl", "m/code/__torch__/x.py"])
    _says(script, "this is a TorchScript archive (for example an OpenAI CLIP file), not a "
                  "StyleGAN generator; load CLIP files with Load CLIP / --clip")


def test_a_field_no_generator_has_and_nan_weights_name_the_generator(tiny, tmp_path):
    torch.save({"g_ema": {"style.1.weight": "text", "input.input": 1}}, tmp_path / "f.pt")
    _says(tmp_path / "f.pt", "not a valid generator file: a field holds what no generator has")
    ros = _ros(tiny)
    key = next(k for k, v in ros["g_ema"].items() if v.is_floating_point() and v.numel() > 1)
    ros["g_ema"][key] = ros["g_ema"][key].clone()
    ros["g_ema"][key].view(-1)[0] = float("nan")
    torch.save(ros, tmp_path / "nan.pt")
    _says(tmp_path / "nan.pt", "the generator's tensor")


def test_pti_and_legacy_torch_files_load_with_their_format(tiny, tmp_path):
    path = write_pti_generator(tiny, tmp_path / "pti.pt")
    loaded = load_generator(path)
    assert (loaded.format, loaded.path, loaded.notes) == ("nvlabs-torch-save", path, [])
    assert loaded.generator.fingerprint() == tiny.fingerprint()
    legacy = tmp_path / "legacy.pt"
    torch.save(_ros(tiny), legacy, _use_new_zipfile_serialization=False)
    old = load_generator(legacy)
    assert (old.format, old.path, old.notes) == ("rosinality", legacy, [ROS_NOTE])
