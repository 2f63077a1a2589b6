"""W+ latent files: our safetensors (``ws`` [B, num_ws, w_dim]) and NVIDIA's projected_w.npz."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_path
from .errors import InputError, ModelFormatError


def save_latents(ws: torch.Tensor, path: str | Path, meta: dict[str, str] | None = None
                 ) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({"ws": ws.detach().to("cpu", torch.float32).contiguous()}, str(tmp),
                  metadata={"format": "coral-latents", **(meta or {})})
    return path


def load_latents(path: str | Path, num_ws: int | None = None, w_dim: int | None = None
                 ) -> torch.Tensor:
    """[B, num_ws, w_dim] W+ codes; checks the shape against the generator when given."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such latent file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "w" not in data:
                raise ModelFormatError(f"{path}: .npz without a 'w' array (NVIDIA projector "
                                       "files store W+ as 'w')")
            ws = torch.from_numpy(data["w"]).to(torch.float32)
    else:
        try:
            with safe_open(str(path), framework="pt") as f:
                ws = f.get_tensor("ws")
        except Exception as exc:
            raise ModelFormatError(f"{path}: not a latent file ({exc})") from exc
    if ws.ndim == 2:
        ws = ws[None]
    if ws.ndim != 3 or (num_ws is not None and ws.shape[1] != num_ws) or \
            (w_dim is not None and ws.shape[2] != w_dim):
        raise InputError(f"{path}: latents of shape {list(ws.shape)} do not fit this generator "
                         f"(expected [B, {num_ws}, {w_dim}])")
    return ws
