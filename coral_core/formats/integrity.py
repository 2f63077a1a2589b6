"""The project's own safetensors files (generators, edits, latents): written with a content
hash, read only after their header has been checked against the file.

Why: a bit flip or a zeroed block inside tensor data leaves a perfectly parseable file, and
safetensors itself would load it and the user would get silently wrong images. Every file we
write carries ``content_sha256`` (over its metadata and tensor names, dtypes, shapes and bytes),
and reading recomputes it. Before anything is allocated the header's declared shapes, dtypes
and offsets must describe exactly the bytes the file holds (no gaps, no overlap, no trailing
data, no more than MAX_FILE_BYTES), so a crafted header cannot make the loader allocate
gigabytes. Foreign files have no such hash; their loaders say so where it matters.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..errors import ModelFormatError

HASH_KEY = "content_sha256"
MAX_HEADER_BYTES = 100_000_000
MAX_FILE_BYTES = 16 * 2 ** 30
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8,
                "F8_E4M3": 1, "F8_E5M2": 1}


def tensor_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                  ) -> str:
    """SHA-256 over the metadata (but the hash itself) and every tensor's name, dtype, shape
    and bytes, in name order: a changed prompt or config is as corrupt as a flipped weight."""
    h = hashlib.sha256()
    meta = {k: v for k, v in (metadata or {}).items() if k != HASH_KEY}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> Path:
    """Atomically write ``tensors`` with ``metadata`` plus their content hash."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = dict(metadata)
    meta[HASH_KEY] = tensor_digest(tensors, meta)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_header(path: Path, what: str) -> dict[str, Any]:
    """The safetensors header, checked against the file before any tensor is read."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ModelFormatError(f"{path}: {size} bytes is larger than any {what} "
                               f"({MAX_FILE_BYTES} bytes at most)")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFormatError(f"{path}: the file is truncated (no safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ModelFormatError(f"{path}: the safetensors header claims {n} bytes but the "
                                   f"file holds {size - 8}: truncated or not {_a(what)}")
        raw = f.read(n)
    from .bounded_json import parse_json

    # a real header is a table of tables of lists: depth 3 (metadata values are strings)
    header = parse_json(raw, str(path), "the safetensors header", max_bytes=MAX_HEADER_BYTES,
                        max_depth=8)
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: the safetensors header is not a table")
    data_bytes = size - 8 - n
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            itemsize = _DTYPE_BYTES[dtype]
            count = 1
            for d in shape:
                if not isinstance(d, int) or d < 0:
                    raise ValueError(f"dimension {d!r}")
                count *= d
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{path}: tensor {name!r} has a malformed header entry "
                                   f"({exc})") from exc
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise ModelFormatError(f"{path}: tensor {name!r} has invalid offsets")
        if count * itemsize != end - start:
            raise ModelFormatError(
                f"{path}: tensor {name!r} declares shape {shape} ({count * itemsize} bytes) "
                f"but spans {end - start} bytes: corrupt or crafted file")
        spans.append((start, end))
    spans.sort()
    cursor = 0
    for start, end in spans:
        if start != cursor:
            raise ModelFormatError(f"{path}: tensor data has a gap or overlap at byte {start}")
        cursor = end
    if cursor != data_bytes:
        raise ModelFormatError(
            f"{path}: the header describes {cursor} bytes of tensor data but the file holds "
            f"{data_bytes}: " + ("truncated" if cursor > data_bytes else
                                 "extra data appended") + "; copy the file again")
    return header


def read_safetensors(path: str | Path, what: str, require_hash: bool = True
                     ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of one of the project's files, verified.

    ``require_hash`` False accepts a file written before hashes existed (it is then only
    header-checked); a hash that is present must always match.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such {what} file")
    header = read_header(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFormatError(f"{path}: not a readable {what} file ({exc})") from exc
    del header
    stored = meta.get(HASH_KEY)
    if stored is None:
        if require_hash:
            raise ModelFormatError(f"{path}: this {what} has no content hash; it was not "
                                   "written by CoralStyleCLIP (or by a version before 0.2)")
    elif stored != tensor_digest(tensors, meta):
        raise ModelFormatError(f"{path}: the {what}'s content does not match its hash: the "
                               "file is corrupt (a damaged copy or download); copy it again")
    return meta, tensors


def _a(noun: str) -> str:
    """The noun with its indefinite article ("an edit", "a generator")."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
