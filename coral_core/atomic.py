"""Atomic file writes: a temp file in the target folder, then ``os.replace``.

A crash or a full disk leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def ensure_writable(target: str | os.PathLike[str], is_folder: bool = False) -> Path:
    """Fail now, not after an hour of training, if ``target`` cannot be written: creates its
    folder and a throw-away temp file there. Raises ``InputError`` naming the path."""
    from .errors import InputError

    target = Path(target)
    folder = target if is_folder else target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".coral-write-check.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise InputError(f"{target}: cannot write the output there ({exc.strerror or exc}); "
                         "choose another --out") from exc
    if not is_folder and target.is_dir():
        raise InputError(f"{target}: is a folder; --out needs a file name")
    return target
