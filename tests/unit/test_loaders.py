"""Every real generator format loads to the same image; unsupported, corrupt and malicious
files give clear errors and run nothing."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from coral_core.errors import ModelFormatError, UnsafeFileError
from coral_core.formats import describe, load_generator, save_generator
from fabricate import (NVLABS_SOURCE, _record, discriminator_record, nvlabs_network_dict,
                       random_generator, tiny_config, write_nvlabs_pickle, write_pti_generator,
                       write_rosinality)


def _image(G: torch.nn.Module, ws: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return G.synthesize(ws, noise_mode="const")


@pytest.fixture(scope="module")
def gen() -> torch.nn.Module:
    return random_generator(tiny_config(conv_clamp=None))


def test_every_format_gives_the_same_image(gen, tmp_path: Path) -> None:
    ws = gen.mapping_ws(gen.z_from_seeds([0, 1]), 0.7)
    ref = _image(gen, ws)
    files = {
        "nvlabs-pkl": write_nvlabs_pickle(gen, tmp_path / "net.pkl"),
        "nvlabs-torch-save": write_pti_generator(gen, tmp_path / "model_pti.pt"),
        "rosinality": write_rosinality(gen, tmp_path / "ros.pt"),
        "rosinality-train": write_rosinality(gen, tmp_path / "train.pt", True),
    }
    save_generator(gen, tmp_path / "native.safetensors")
    files["coral-safetensors"] = tmp_path / "native.safetensors"
    for fmt, path in files.items():
        loaded = load_generator(path)
        assert loaded.format == fmt
        assert loaded.generator.fingerprint() == gen.fingerprint()
        assert (_image(loaded.generator, ws) - ref).abs().max() <= 1e-5, fmt


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("arch", ["skip", "orig", "resnet"])
def test_nvlabs_pickle_protocols_and_architectures(protocol: int, arch: str,
                                                   tmp_path: Path) -> None:
    G = random_generator(tiny_config(architecture=arch, conv_clamp=256.0))
    loaded = load_generator(write_nvlabs_pickle(G, tmp_path / "g.pkl", protocol))
    assert loaded.generator.cfg == G.cfg  # hyper-parameters read from the records
    ws = G.mapping_ws(G.z_from_seeds([3]), 0.5, 4)
    assert torch.equal(_image(loaded.generator, ws), _image(G, ws))


def test_nvlabs_truncation_uses_the_files_w_avg(gen, tmp_path: Path) -> None:
    loaded = load_generator(write_nvlabs_pickle(gen, tmp_path / "g.pkl"))
    assert torch.equal(loaded.generator.w_avg, gen.w_avg)


def test_rosinality_training_checkpoint_without_latent_avg(gen, tmp_path: Path) -> None:
    loaded = load_generator(write_rosinality(gen, tmp_path / "t.pt", training_checkpoint=True))
    assert any("estimated" in n for n in loaded.notes)
    assert loaded.generator.cfg.mapping_layers == gen.cfg.mapping_layers
    assert loaded.generator.cfg.channel_base == gen.cfg.channel_base


def test_e4e_checkpoint_decoder_is_loaded(gen, tmp_path: Path) -> None:
    from coral_core.formats import nvlabs_to_rosinality

    ros = nvlabs_to_rosinality(gen)
    sd = {f"decoder.{k}": v for k, v in ros["g_ema"].items()}
    sd["encoder.input_layer.0.weight"] = torch.randn(4, 3, 3, 3)
    torch.save({"state_dict": sd, "opts": {"stylegan_size": 32},
                "latent_avg": ros["latent_avg"].repeat(gen.num_ws, 1)}, tmp_path / "e4e.pt")
    loaded = load_generator(tmp_path / "e4e.pt")
    assert loaded.format == "e4e-decoder"
    assert torch.equal(loaded.generator.w_avg, gen.w_avg)


def test_describe_reports_structure(gen, tmp_path: Path) -> None:
    info = describe(load_generator(write_nvlabs_pickle(gen, tmp_path / "g.pkl")))
    assert info["resolution"] == 32 and info["num_ws"] == 8 and info["z_dim"] == 32
    assert info["mapping_layers"] == 2 and info["parameters"] == gen.parameter_count()


# ---- unsupported but recognisable files ---------------------------------------------------

def test_stylegan3_pickle_is_named(gen, tmp_path: Path) -> None:
    net = nvlabs_network_dict(gen)
    syn = net["G_ema"].state["_modules"]["synthesis"]
    syn.state["_modules"] = {"input": discriminator_record(), "L0_36_512": discriminator_record()}
    write_nvlabs_pickle(gen, tmp_path / "sg3.pkl", top=net)
    with pytest.raises(ModelFormatError, match="StyleGAN3"):
        load_generator(tmp_path / "sg3.pkl")


def test_conditional_generator_is_named(gen, tmp_path: Path) -> None:
    net = nvlabs_network_dict(gen)
    net["G_ema"].state["c_dim"] = 10
    write_nvlabs_pickle(gen, tmp_path / "cond.pkl", top=net)
    with pytest.raises(ModelFormatError, match="class-conditional"):
        load_generator(tmp_path / "cond.pkl")


def test_discriminator_only_files(gen, tmp_path: Path) -> None:
    write_nvlabs_pickle(gen, tmp_path / "d.pkl", top={"D": discriminator_record()})
    with pytest.raises(ModelFormatError, match="discriminator"):
        load_generator(tmp_path / "d.pkl")
    torch.save({"d": {"convs.0.0.weight": torch.zeros(1)}}, tmp_path / "d.pt")
    with pytest.raises(ModelFormatError, match="discriminator"):
        load_generator(tmp_path / "d.pt")


def test_tensorflow_pickle_is_named(tmp_path: Path) -> None:
    # protocol-2 GLOBAL of the TF Network class, as in stylegan2-ffhq-config-f.pkl
    (tmp_path / "tf.pkl").write_bytes(b"\x80\x02cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01.")
    with pytest.raises(ModelFormatError, match="TensorFlow"):
        load_generator(tmp_path / "tf.pkl")


def test_clip_files_passed_as_generator(clip_files) -> None:
    for key in ("torchscript", "safetensors", "bin"):
        with pytest.raises(ModelFormatError, match="CLIP"):
            load_generator(clip_files[key])


@pytest.mark.parametrize("fmt", ["pkl", "pti", "safetensors", "ros"])
def test_truncated_files(gen, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"g.{fmt}"
    if fmt == "pkl":
        write_nvlabs_pickle(gen, path)
    elif fmt == "pti":
        write_pti_generator(gen, path)
    elif fmt == "ros":
        write_rosinality(gen, path)
    else:
        save_generator(gen, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match=str(path.name)):
        load_generator(path)


def test_empty_missing_and_garbage_files(tmp_path: Path) -> None:
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty"):
        load_generator(tmp_path / "empty.pkl")
    with pytest.raises(ModelFormatError, match="no such"):
        load_generator(tmp_path / "missing.pkl")
    (tmp_path / "noise.bin").write_bytes(os.urandom(4096))
    with pytest.raises(ModelFormatError, match="unrecognised|corrupt"):
        load_generator(tmp_path / "noise.bin")


# ---- malicious files: nothing in them may run ----------------------------------------------

class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_os_system_reduce_is_refused(tmp_path: Path, protocol: int) -> None:
    canary = tmp_path / "canary_os"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Evil(os.system, f"touch {canary}")}, protocol))
    with pytest.raises(UnsafeFileError, match="system"):
        load_generator(path)
    assert not canary.exists()


def test_eval_and_import_are_refused(tmp_path: Path) -> None:
    canary = tmp_path / "canary_eval"
    for name, payload in [
        ("eval", _Evil(eval, f"open({str(canary)!r}, 'w').write('x')")),
        ("import", _Evil(__import__, "shutil")),
    ]:
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(pickle.dumps(payload, 4))
        with pytest.raises(UnsafeFileError):
            load_generator(path)
    assert not canary.exists()


def test_embedded_module_source_is_never_executed(gen, tmp_path: Path) -> None:
    canary = tmp_path / "canary_src"
    src = (f"import pathlib\npathlib.Path({str(canary)!r}).write_text('ran')\n"
           + NVLABS_SOURCE)
    for path in (write_nvlabs_pickle(gen, tmp_path / "g.pkl", src=src),
                 write_pti_generator(gen, tmp_path / "g.pt", src=src)):
        loaded = load_generator(path)
        assert loaded.generator.fingerprint() == gen.fingerprint()
    assert not canary.exists()


def test_torch_zip_with_foreign_global_is_refused(gen, tmp_path: Path) -> None:
    canary = tmp_path / "canary_zip"
    torch.save({"g": _record(gen, gen.cfg, NVLABS_SOURCE),
                "x": _Evil(os.system, f"touch {canary}")}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError):
        load_generator(tmp_path / "evil.pt")
    assert not canary.exists()
    assert zipfile.is_zipfile(tmp_path / "evil.pt")
