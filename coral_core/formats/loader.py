"""Load any supported StyleGAN2 file; the format is detected from the content, not the name.

Supported: NVlabs network pickles (StyleGAN2 / ADA, and StyleGAN2 trained with the stylegan3
code), PTI's ``torch.save``d generators, rosinality ``.pt`` (converted, exported, training
checkpoints), the generator inside an e4e checkpoint, and our own ``.safetensors``. Everything
else gets an error that names the file, says what it looks like, and lists what is supported.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import ModelFormatError
from ..stylegan import Generator
from . import native
from .nvlabs import build_generator, generator_from_nvlabs
from .rosinality import config_from_rosinality, rosinality_to_nvlabs_state
from .safe_pickle import (check_torch_archive_structure, load_plain_pickle, load_torch_zip,
                          read_archive_pickle, referenced_globals)

SUPPORTED = ("NVlabs StyleGAN2/ADA .pkl, PTI generator .pt, rosinality .pt, e4e .pt (its "
             "decoder), CoralStyleCLIP .safetensors")
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


@dataclass
class LoadedGenerator:
    generator: Generator
    format: str
    path: Path
    notes: list[str] = field(default_factory=list)


def sniff(path: Path) -> str:
    """Container kind from the first bytes: 'zip', 'torchscript', 'safetensors', 'pickle',
    'torch-legacy' or 'unknown'."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            return "zip"
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "zip"
    if head.startswith(LEGACY_TORCH_MAGIC):
        return "torch-legacy"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def _torch_load_safe(path: Path) -> Any:
    check_torch_archive_structure(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFormatError(
            f"{path}: torch file that needs code to load ({str(exc).splitlines()[0][:200]}); "
            f"only weight files are accepted. Supported: {SUPPORTED}") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise ModelFormatError(f"{path}: the file is truncated or corrupt ({exc})") from exc


def _w_avg_estimate(G: Generator, samples: int = 10000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(samples, G.z_dim, generator=g)
    with torch.no_grad():
        return G.mapping(z)[:, 0].mean(0)


def _from_rosinality(g_ema: dict[str, torch.Tensor], latent_avg: Any, path: Path, fmt: str
                     ) -> LoadedGenerator:
    cfg = config_from_rosinality(g_ema, path)
    lat = latent_avg if isinstance(latent_avg, torch.Tensor) else None
    state = rosinality_to_nvlabs_state(g_ema, cfg, lat)
    G = build_generator(cfg, state, path)
    notes = ["rosinality files do not record the mapping lr multiplier; assumed 0.01"]
    if lat is None:
        G.mapping.w_avg.copy_(_w_avg_estimate(G))
        notes.append("no latent_avg in the file; truncation centre estimated from 10,000 z")
    return LoadedGenerator(G, fmt, path, notes)


def _classify_dict(obj: Any, path: Path) -> LoadedGenerator:
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict. "
                               f"Supported: {SUPPORTED}")
    keys = [str(k) for k in obj]
    if isinstance(obj.get("g_ema"), dict):
        fmt = "rosinality-train" if "args" in obj or "g_optim" in obj else "rosinality"
        return _from_rosinality(obj["g_ema"], obj.get("latent_avg"), path, fmt)
    sd: dict = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
    sd_keys = [str(k) for k in sd]
    if any(k.startswith("decoder.") for k in sd_keys) and any(k.startswith("encoder.")
                                                               for k in sd_keys):
        dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
        loaded = _from_rosinality(dec, obj.get("latent_avg"), path, "e4e-decoder")
        loaded.notes.append("loaded the generator (decoder) of an e4e/pSp checkpoint")
        return loaded
    if "style.1.weight" in sd_keys and "input.input" in sd_keys:
        return _from_rosinality(sd, obj.get("latent_avg"), path, "rosinality-state-dict")
    if native.is_clip_state(sd_keys):
        raise ModelFormatError(f"{path}: this is a CLIP checkpoint, not a StyleGAN generator; "
                               "load it with Load CLIP / --clip")
    if "d" in keys or any(k.startswith("convs.0.0.") or k.startswith("final_linear")
                          for k in sd_keys):
        raise ModelFormatError(f"{path}: this looks like a discriminator-only checkpoint "
                               f"(keys {keys[:6]}); a generator (g_ema) is needed")
    raise ModelFormatError(f"{path}: unrecognised checkpoint (top-level keys {keys[:8]}). "
                           f"Supported: {SUPPORTED}")


def load_generator(path: str | Path) -> LoadedGenerator:
    """Read a generator file safely (no code from the file ever runs) onto the CPU; weights
    that hold NaN or infinity are refused (they draw black images without another sign)."""
    from .clip_checks import check_finite

    with file_fields_checked(Path(path), "generator"):
        loaded = _load_generator(Path(path))
    check_finite(loaded.generator.state_dict(), str(loaded.path), "generator")
    return loaded


@contextlib.contextmanager
def file_fields_checked(path: Path, what: str) -> Iterator[None]:
    """The loaders' boundary: a field of the wrong type or value deep in a file's records
    (``img_resolution: "abc"``, ``_init_kwargs`` a list, a NaN size) becomes one
    ModelFormatError naming the file, never a raw exception in the user's face."""
    try:
        yield
    except ModelFormatError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError,
            RecursionError, AssertionError, UnicodeError, EOFError) as exc:
        raise ModelFormatError(f"{path}: not a valid {what} file: a field holds what no "
                               f"{what} has ({type(exc).__name__}: {str(exc)[:200]})") from exc


def _load_generator(path: Path) -> LoadedGenerator:
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such generator file")
    if path.stat().st_size == 0:
        raise ModelFormatError(f"{path}: the file is empty")
    kind = sniff(path)
    if kind == "safetensors":
        meta = native.read_metadata(path)
        if meta.get("format") == native.FORMAT_NAME:
            return LoadedGenerator(native.load_native(path, meta), "coral-safetensors", path)
        keys = native.safetensors_keys(path)
        if native.is_clip_state(keys):
            raise ModelFormatError(f"{path}: this is a CLIP checkpoint (safetensors), not a "
                                   "StyleGAN generator; load it with Load CLIP / --clip")
        raise ModelFormatError(f"{path}: safetensors file without CoralStyleCLIP generator "
                               f"metadata (keys {keys[:5]}). Supported: {SUPPORTED}")
    if kind == "pickle":
        top = load_plain_pickle(path)
        G, notes = generator_from_nvlabs(top, path)
        return LoadedGenerator(G, "nvlabs-pkl", path, notes)
    if kind == "zip":
        try:
            check_torch_archive_structure(path)
            with zipfile.ZipFile(path) as zf:
                data = read_archive_pickle(zf, str(path))
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelFormatError(f"{path}: the file is truncated or corrupt ({exc})") from exc
        if "torch_utils.persistence" in referenced_globals(data):
            G, notes = generator_from_nvlabs(load_torch_zip(path), path)
            return LoadedGenerator(G, "nvlabs-torch-save", path, notes)
        return _classify_dict(_torch_load_safe(path), path)
    if kind == "torch-legacy":
        return _classify_dict(_torch_load_safe(path), path)
    if kind == "torchscript":
        raise ModelFormatError(f"{path}: this is a TorchScript archive (for example an OpenAI "
                               "CLIP file), not a StyleGAN generator; load CLIP files with "
                               "Load CLIP / --clip")
    raise ModelFormatError(f"{path}: unrecognised file (not a pickle, torch archive or "
                           f"safetensors file). Supported: {SUPPORTED}")


def describe(loaded: LoadedGenerator) -> dict[str, Any]:
    G = loaded.generator
    cfg = G.cfg
    return {"path": str(loaded.path), "format": loaded.format,
            "resolution": cfg.img_resolution, "num_ws": cfg.num_ws, "z_dim": cfg.z_dim,
            "w_dim": cfg.w_dim, "mapping_layers": cfg.mapping_layers,
            "architecture": cfg.architecture, "channel_base": cfg.channel_base,
            "channel_max": cfg.channel_max, "conv_clamp": cfg.conv_clamp,
            "conv_layers": len(G.conv_layers), "parameters": G.parameter_count(),
            "fingerprint": G.fingerprint(), "notes": loaded.notes}


__all__ = ["load_generator", "LoadedGenerator", "describe", "sniff", "io"]
