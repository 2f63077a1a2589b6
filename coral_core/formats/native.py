"""The project's own generator format: safetensors weights + the config in the metadata.

No pickle at all, so it is the format to convert everything else to and to share.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ModelFormatError
from ..stylegan import Generator, GeneratorConfig
from .integrity import read_header, read_safetensors, write_safetensors
from .nvlabs import build_generator

FORMAT_NAME = "coral-stylegan2"
FORMAT_VERSION = "2"  # 2: content hash required (integrity.py); 1 is read header-checked
READABLE_VERSIONS = ("1", "2")


def save_generator(G: Generator, path: str | Path, extra: dict[str, str] | None = None) -> None:
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "config": G.cfg.to_json(), "fingerprint": G.fingerprint()}
    meta.update(extra or {})
    write_safetensors(path, dict(G.state_dict()), meta)


def read_metadata(path: Path) -> dict[str, str]:
    read_header(path, "safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFormatError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_native(path: Path, meta: dict[str, str]) -> Generator:
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ModelFormatError(f"{path}: generator format version "
                               f"{meta.get('format_version')!r} is not supported (expected "
                               f"{FORMAT_VERSION}); update ComfyUI-CoralStyleCLIP")
    try:
        from .bounded_json import parse_json

        cfg = GeneratorConfig.from_dict(parse_json(meta["config"], str(path),
                                                   "the generator config", 65536, 8))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ModelFormatError(f"{path}: invalid generator config in metadata: {exc}") from exc
    _, state = read_safetensors(path, "generator",
                                require_hash=meta.get("format_version") != "1")
    return build_generator(cfg, state, path)


def is_clip_state(keys: list[str]) -> bool:
    return any(k.startswith("visual.") for k in keys) and "token_embedding.weight" in keys \
        or any(k.endswith("visual.conv1.weight") for k in keys)


def safetensors_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


__all__ = ["save_generator", "load_native", "read_metadata", "FORMAT_NAME", "torch"]
