"""Every way a latent file can be wrong gives an error that names the file and what was
expected, before anything is applied."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from coral_core.errors import InputError, ModelFormatError
from coral_core.formats.integrity import write_safetensors
from coral_core.latents import load_latents, save_latents


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npz_with_header(path: Path, shape: tuple) -> Path:
    """A w.npy member whose header declares ``shape`` but holds only a few bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", buf.getvalue() + b"\0" * 16)
    return path


CASES = {
    "missing": (lambda p: p / "nothing.safetensors", InputError, "no such latent file"),
    "npz without w": (lambda p: _npz(p / "a.npz", x=np.zeros((1, 8, 16), np.float32)),
                      ModelFormatError, "without a 'w' array"),
    "npz of objects": (lambda p: _npz(p / "b.npz", w=np.array([{"a": 1}], dtype=object)),
                       ModelFormatError, "Python objects"),
    "npz header lies": (lambda p: _npz_with_header(p / "c.npz", (10**6, 18, 512)),
                        ModelFormatError, "corrupt or crafted"),
    "npz truncated": (lambda p: _bytes(p / "d.npz", b"PK\x03\x04" + b"\0" * 40),
                      ModelFormatError, "not a readable .npz"),
    "safetensors without ws": (
        lambda p: write_safetensors(p / "e.safetensors", {"x": torch.zeros(1, 8, 16)}, {}),
        ModelFormatError, "no 'ws' tensor"),
    "wrong shape": (lambda p: save_latents(torch.zeros(2, 7, 16), p / "f.safetensors"),
                    InputError, "do not fit this generator"),
    "no rows": (lambda p: save_latents(torch.zeros(0, 8, 16), p / "g.safetensors"),
                InputError, "holds 0 latents"),
    "NaN inside": (
        lambda p: write_safetensors(p / "h.safetensors",
                                    {"ws": torch.full((1, 8, 16), float("nan"))}, {}),
        InputError, "NaN or infinite"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_latent_files_are_refused_by_name(tmp_path: Path, name: str) -> None:
    make, error, words = CASES[name]
    path = Path(make(tmp_path))
    with pytest.raises(error) as info:
        load_latents(path, num_ws=8, w_dim=16)
    assert str(path) in str(info.value) and words in str(info.value)


def test_saving_non_finite_latents_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="NaN or infinite"):
        save_latents(torch.tensor([[[float("inf")] * 16] * 8]), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_nvidia_projector_file_reads_as_one_row(tmp_path: Path) -> None:
    w = np.random.RandomState(0).randn(8, 16).astype(np.float32)
    ws = load_latents(_npz(tmp_path / "projected_w.npz", w=w), num_ws=8, w_dim=16)
    assert ws.shape == (1, 8, 16) and np.allclose(ws[0].numpy(), w)
