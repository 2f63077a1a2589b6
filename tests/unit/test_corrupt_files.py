"""Corrupted copies of the project's own files are refused with a message that names the file,
never loaded silently with wrong numbers: truncations, bit flips and zeroed blocks at many
offsets, appended and doubled data. Also crafted headers that declare huge tensors."""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from coral_core.editing.edit import Edit
from coral_core.errors import InputError, ModelFormatError
from coral_core.formats import load_generator, save_generator
from coral_core.latents import load_latents, save_latents
from fabricate import random_generator, tiny_config


def _own_files(tmp_path: Path) -> dict[str, tuple[Path, object]]:
    G = random_generator(tiny_config())
    gen = tmp_path / "g.safetensors"
    save_generator(G, gen)
    lat = save_latents(G.mapping_ws(G.z_from_seeds([0, 1])), tmp_path / "l.safetensors")
    return {"generator": (gen, load_generator), "latents": (lat, load_latents)}


def _variants(data: bytes) -> dict[str, bytes]:
    n = len(data)
    out = {"appended": data + b"\0" * 16, "doubled": data + data}
    for frac in (0.02, 0.3, 0.6, 0.97):
        out[f"truncated@{frac}"] = data[:int(n * frac)]
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    offsets = [header_end + (n - header_end) * i // 9 for i in range(9)]
    offsets += [12, 40, header_end // 2, header_end - 3]  # inside the JSON header too
    for off in offsets:
        flipped = bytearray(data)
        flipped[off] ^= 0x10
        out[f"bitflip@{off}"] = bytes(flipped)
    for off in offsets[:9]:
        zeroed = bytearray(data)
        zeroed[off:off + 64] = bytes(len(zeroed[off:off + 64]))
        if zeroed != bytearray(data):
            out[f"zeroed@{off}"] = bytes(zeroed)
    return out


def test_every_corruption_of_own_files_is_refused(tmp_path: Path) -> None:
    accepted = []
    tried = 0
    for kind, (path, load) in _own_files(tmp_path).items():
        load(path)  # the intact file loads
        for name, data in _variants(path.read_bytes()).items():
            bad = tmp_path / f"{kind}-{name}.safetensors"
            bad.write_bytes(data)
            tried += 1
            try:
                load(bad)
            except (ModelFormatError, InputError) as exc:
                assert str(bad) in str(exc), exc
            else:
                accepted.append(f"{kind}:{name}")
    assert tried > 40
    assert accepted == []


@pytest.fixture(scope="module")
def trained_edit_file(clip_files, tmp_path_factory) -> Path:
    from coral_core.clip_model import load_clip
    from coral_core.editing.trainer import TrainConfig, train_edit

    G = random_generator(tiny_config(conv_clamp=None))
    folder = tmp_path_factory.mktemp("edit")
    res = train_edit(G, load_clip(clip_files["local_dir"]),
                     TrainConfig(prompt="a red circle", steps=2, batch=1, seed=1,
                                 catalogue_dir=folder))
    return res.edit.save(folder / "e.safetensors")


def test_corrupt_edit_is_refused(tmp_path: Path, trained_edit_file: Path) -> None:
    Edit.load(trained_edit_file)
    accepted = []
    for name, data in _variants(trained_edit_file.read_bytes()).items():
        bad = tmp_path / f"edit-{name}.safetensors"
        bad.write_bytes(data)
        try:
            Edit.load(bad)
        except ModelFormatError as exc:
            assert str(bad) in str(exc)
        else:
            accepted.append(name)
    assert accepted == []


def _safetensors_with_header(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def test_header_declaring_a_huge_tensor_is_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.safetensors"
    path.write_bytes(_safetensors_with_header(
        {"ws": {"dtype": "F32", "shape": [100000, 18, 512 * 1000],
                "data_offsets": [0, 16]}, "__metadata__": {"format": "coral-latents"}},
        b"\0" * 16))
    with pytest.raises(ModelFormatError, match="declares shape"):
        load_latents(path)


def test_generator_config_with_absurd_sizes_is_refused(tmp_path: Path) -> None:
    G = random_generator(tiny_config())
    path = tmp_path / "g.safetensors"
    save_generator(G, path)
    from coral_core.formats.native import load_native

    for field, value in (("z_dim", 10 ** 12), ("w_dim", -5), ("channel_max", 25_000_000)):
        cfg = json.loads(G.cfg.to_json())
        cfg[field] = value
        with pytest.raises(ModelFormatError, match=field):
            load_native(path, {"format_version": "1", "config": json.dumps(cfg)})
    cfg = json.loads(G.cfg.to_json())
    cfg["channel_max"] = 4096
    cfg["channel_base"] = 2 ** 20
    with pytest.raises(ModelFormatError, match="refused before allocating"):
        load_native(path, {"format_version": "1", "config": json.dumps(cfg)})


def test_npz_header_declaring_1e10_floats_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "projected_w.npz"
    np.savez(path, w=np.zeros((1, 6, 16), np.float32))
    with zipfile.ZipFile(path) as zf:
        data = zf.read("w.npy")
    data = data.replace(b"(1, 6, 16)", b"(100000, 100000, 1)".ljust(10))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", data)
    with pytest.raises(ModelFormatError, match="declares shape"):
        load_latents(path)


def test_latents_by_content_not_suffix(tmp_path: Path) -> None:
    G = random_generator(tiny_config())
    ws = G.mapping_ws(G.z_from_seeds([3]))
    renamed = save_latents(ws, tmp_path / "l.safetensors").rename(tmp_path / "l.npz")
    assert torch.equal(load_latents(renamed), ws)


def test_non_finite_latents_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "nan.npz"
    np.savez(path, w=np.full((1, 6, 16), np.nan, np.float32))
    with pytest.raises(InputError, match="NaN"):
        load_latents(path)
