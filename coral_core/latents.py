"""W+ latent files: our safetensors (``ws`` [B, num_ws, w_dim]) and NVIDIA's projected_w.npz."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from .errors import InputError, ModelFormatError
from .formats.integrity import read_safetensors, write_safetensors


MAX_LATENT_ROWS = 100_000
MAX_LATENT_FLOATS = 2 ** 28  # 1 GiB of float32


def save_latents(ws: torch.Tensor, path: str | Path, meta: dict[str, str] | None = None
                 ) -> Path:
    if not torch.isfinite(ws).all():
        raise InputError(f"{path}: refusing to save latents with NaN or infinite values")
    return write_safetensors(path, {"ws": ws.detach().to("cpu", torch.float32)},
                             {"format": "coral-latents", **(meta or {})})


def _npz_w(path: Path) -> torch.Tensor:
    """NVIDIA projector files: the 'w' array, its header checked before it is read."""
    try:
        with zipfile.ZipFile(path) as zf:
            if "w.npy" not in zf.namelist():
                raise ModelFormatError(f"{path}: .npz without a 'w' array (NVIDIA projector "
                                       "files store W+ as 'w')")
            info = zf.getinfo("w.npy")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                shape, _fortran, dtype = read(f)
        if dtype.hasobject:
            raise ModelFormatError(f"{path}: 'w' holds Python objects, not numbers")
        if dtype.kind not in "fiu":
            raise ModelFormatError(f"{path}: 'w' holds {dtype} values; W+ latents are real "
                                   "numbers (float)")
        held = path.stat().st_size
        if info.file_size > 64 * held + 2 ** 20:
            raise ModelFormatError(f"{path}: 'w' declares {info.file_size} bytes inside a "
                                   f"{held}-byte file: a compression bomb, not latents")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count > MAX_LATENT_FLOATS or count * dtype.itemsize > info.file_size:
            raise ModelFormatError(f"{path}: 'w' declares shape {list(shape)} "
                                   f"({count * dtype.itemsize} bytes) but holds "
                                   f"{info.file_size}: corrupt or crafted file")
        with np.load(path, allow_pickle=False) as data:
            return torch.from_numpy(np.asarray(data["w"], dtype=np.float32))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ModelFormatError(f"{path}: not a readable .npz latent file ({exc})") from exc


def load_latents(path: str | Path, num_ws: int | None = None, w_dim: int | None = None
                 ) -> torch.Tensor:
    """[B, num_ws, w_dim] W+ codes; checks the shape against the generator when given."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such latent file")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:  # by content, not suffix: a renamed file is still read as what it is
        ws = _npz_w(path)
    else:
        meta, tensors = read_safetensors(path, "latent file", require_hash=False)
        if "ws" not in tensors:
            raise ModelFormatError(f"{path}: not a latent file (no 'ws' tensor)")
        ws = tensors["ws"].to(torch.float32)
    if ws.ndim == 2:
        ws = ws[None]
    if ws.ndim != 3 or (num_ws is not None and ws.shape[1] != num_ws) or \
            (w_dim is not None and ws.shape[2] != w_dim):
        raise InputError(f"{path}: latents of shape {list(ws.shape)} do not fit this generator "
                         f"(expected [B, {num_ws}, {w_dim}])")
    if ws.shape[0] == 0 or ws.shape[0] > MAX_LATENT_ROWS:
        raise InputError(f"{path}: holds {ws.shape[0]} latents (expected 1..{MAX_LATENT_ROWS})")
    if not torch.isfinite(ws).all():
        raise InputError(f"{path}: the latents hold NaN or infinite values")
    return ws
