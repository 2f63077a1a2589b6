"""Resident models for the library and the ``coral`` command: each file is loaded once per
device and kept there between runs. (Inside ComfyUI the host is the one residency layer: the
nodes load files directly, its executor keeps their outputs and its ModelPatcher moves them.)

Entries are keyed by (kind, resolved path, content fingerprint, device, options), so editing or
replacing a file on disk loads it anew while an unchanged file is served from memory. Least-
recently-used entries are evicted when the total exceeds a memory budget; ``free`` releases
everything (or one file) on request, e.g. when ComfyUI asks to free memory.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable

import torch

from .devices import empty_device_cache, pick_device


def file_fingerprint(path: str | Path) -> str:
    """Size, mtime and a hash of the first and last MiB (all of a file of at most 2 MiB): cheap,
    and changes with the content, even where a copy kept the size and the mtime."""
    p = Path(str(path).removeprefix("local-dir:"))
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if st.st_size > 2 << 20:
                fh.seek(-(1 << 20), 2)
            h.update(fh.read())  # the last MiB, or the rest of a file of at most 2 MiB
    return h.hexdigest()[:16]


def module_bytes(obj: Any) -> int:
    module = obj if isinstance(obj, torch.nn.Module) else getattr(obj, "model", None)
    if module is None and hasattr(obj, "generator"):
        module = obj.generator
    if not isinstance(module, torch.nn.Module):
        return 0
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class CacheEntry:
    value: Any
    nbytes: int
    path: str


class ModelCache:
    """Thread-safe LRU cache of loaded models under a byte budget (None = unlimited)."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._entries: "OrderedDict[Hashable, CacheEntry]" = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0

    def get(self, kind: str, path: str | Path, loader: Callable[[torch.device], Any],
            device: str | torch.device | None = None, options: tuple = ()) -> Any:
        dev = pick_device(device)
        resolved = _resolved(path)
        key = (kind, resolved, file_fingerprint(path), str(dev), options)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key].value
            value = loader(dev)
            self.loads += 1
            self._entries[key] = CacheEntry(value, module_bytes(value), resolved)
            self._evict(keep=key)
            return value

    def _evict(self, keep: Hashable) -> None:
        if self.budget_bytes is None:
            return
        while self.total_bytes() > self.budget_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            self._entries.pop(oldest)
        empty_device_cache()

    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def free(self, path: str | Path | None = None) -> int:
        """Drop every entry (or those of one file); returns how many were dropped."""
        with self._lock:
            if path is None:
                n = len(self._entries)
                self._entries.clear()
            else:
                target = _resolved(path)
                keys = [k for k, e in self._entries.items() if e.path == target]
                for k in keys:
                    self._entries.pop(k)
                n = len(keys)
        empty_device_cache()
        return n

    def __len__(self) -> int:
        return len(self._entries)


def _resolved(path: str | Path) -> str:
    """The name an entry is kept under: the absolute path, or a CLIP's ``local-dir:`` source
    as given (one rule for ``get`` and ``free``: before, ``free`` could not find a local-dir
    CLIP)."""
    return str(path) if str(path).startswith("local-dir:") else str(Path(path).resolve())


ENGINE_CACHE = ModelCache()


def get_generator(path: str | Path, device: str | torch.device | None = None,
                  cache: ModelCache | None = None) -> Any:
    """A ``LoadedGenerator`` resident on ``device`` (loaded once per file and device)."""
    from .formats import load_generator

    def load(dev: torch.device) -> Any:
        loaded = load_generator(path)
        loaded.generator.to(dev)
        return loaded

    return (cache if cache is not None else ENGINE_CACHE).get("generator", path, load, device)


def get_clip(source: str | Path, model_name: str | None = None,
             device: str | torch.device | None = None, cache: ModelCache | None = None) -> Any:
    """A ``CoralClip`` resident on ``device``."""
    from .clip_model import load_clip

    return (cache if cache is not None else ENGINE_CACHE).get(
        "clip", source, lambda dev: load_clip(source, model_name, dev), device, (model_name,))
