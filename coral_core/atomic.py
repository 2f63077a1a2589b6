"""Atomic file writes: a temp file in the target folder, then ``os.replace``.

A crash or a full disk leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


STALE_TEMP_SECONDS = 3600  # a temp file this old beside a target is a killed write's
DEAD_WRITER_SECONDS = 60    # ... and one this old whose writer (named in it) is gone


def _temp_prefix(target: Path) -> str:
    """Temp files carry their writer's process id, so the next write can tell a killed
    writer's leftovers from a live writer's file at once instead of an hour later."""
    return f".{target.name}.{os.getpid()}."


def _writer_gone(temp: Path, target: Path) -> bool:
    """Whether the process named in ``temp``'s name has ended (False when the name carries no
    id or the process may still run: another user's, or alive)."""
    pid_text = temp.name[len(f".{target.name}."):].split(".", 1)[0]
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    return False


def sweep_stale_temps(target: Path) -> None:
    """Remove temp files that killed writes of ``target`` left behind: those whose writer has
    ended and that have not grown for a minute (a live writer keeps its file fresh; the
    minute guards a writer on another machine sharing the folder), and any an hour old."""
    import time

    now = time.time()
    for old in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            age = now - old.stat().st_mtime
            if age > STALE_TEMP_SECONDS or (age > DEAD_WRITER_SECONDS
                                            and _writer_gone(old, target)):
                old.unlink()
        except OSError:
            pass  # another process's file, or gone already


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp",
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.filename is None or Path(str(exc.filename)) == tmp_path:
            # a full disk while writing names no file (or the temp one): name the target
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if type(exc).__name__ == "SafetensorError":  # safetensors' own I/O error type
            if "No space left" in str(exc):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from exc
            raise OSError(errno.EIO, f"could not be written ({exc})", str(target)) from exc
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


def file_stamp(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(size, mtime in ns) of a file, None if absent: tells whether another writer replaced
    it while a long job ran."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (POSIX ``flock`` on the folder itself, so no lock
    file is left): two jobs finishing at once check and write their outputs one after the
    other. Where ``flock`` is missing (Windows) the check-then-write is unguarded."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _free_name(target: Path) -> Path:
    """``target`` or, if it exists, the first free ``stem-N.suffix`` beside it."""
    n = 2
    candidate = target
    while candidate.exists():
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        n += 1
    return candidate


def save_keeping_result(save: "Callable[[Path], object]", target: str | os.PathLike[str],
                        stamp_at_start: tuple[int, int] | None) -> tuple[Path, list[str]]:
    """Write a long job's result without ever losing it: (where it went, notes).

    If another job wrote ``target`` since this one started (two trainings with one --out),
    this result goes beside it under a new name instead of silently replacing it; the check
    and the write happen under a lock on the folder, so two jobs ending at once cannot both
    pass the check. If the write fails (a full disk), the result is written to the system's
    temp folder under a name no earlier rescue holds, and the error says where; only if that
    fails too is the error raised as it is."""
    from .errors import InputError

    target = Path(target)
    notes: list[str] = []
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _folder_lock(target.parent):
            if file_stamp(target) != stamp_at_start and target.exists():
                alt = _free_name(target)
                notes.append(f"{target} was written by another job while this one ran; this "
                             f"result is in {alt}")
                target = alt
            save(target)
        return target, notes
    except OSError as exc:
        folder = Path(tempfile.gettempdir()) / "coral-rescued"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _folder_lock(folder):
                rescue = _free_name(folder / target.name)
                save(rescue)
        except OSError:
            raise InputError(f"{target}: could not write the result ({exc.strerror or exc}), "
                             f"nor a rescue copy in {folder}") from exc
        raise InputError(f"{target}: could not write the result ({exc.strerror or exc}); it "
                         f"was kept at {rescue}: move it where you want it") from exc
