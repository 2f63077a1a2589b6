"""Reading plain weight files (state dicts, checkpoints) safely: safetensors, or torch files
with ``weights_only=True``. One place, so every loader gets the same safety and errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFormatError


def load_weights_file(path: str | Path, what: str) -> Any:
    """The file's object (a dict for safetensors); errors name the file and what was expected."""
    from .loader import sniff
    from .safe_pickle import check_torch_archive_structure

    path = Path(path)
    try:
        if sniff(path) == "safetensors":  # header bounded and checked before safetensors reads
            from .integrity import read_safetensors

            return read_safetensors(path, what, require_hash=False)[1]
        check_torch_archive_structure(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except ModelFormatError:
        raise
    except Exception as exc:
        raise ModelFormatError(f"{path}: not a readable {what} file ({exc})") from exc


def unwrap_state_dict(obj: Any) -> Any:
    """Training checkpoints nest the weights under 'state_dict' and DDP prefixes 'module.'."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict):
        obj = {str(k).removeprefix("module."): v for k, v in obj.items()}
    return obj
