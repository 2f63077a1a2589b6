"""The model cache's file fingerprint decides whether a loader reads a file again: every change
a user can make to a model file or folder must change it, and nothing else may."""
from __future__ import annotations

import os
from pathlib import Path

from coral_core.cache import file_fingerprint

MIB = 1 << 20


def _write(path: Path, data: bytes, mtime_ns: int = 1_700_000_000_000_000_000) -> Path:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_a_large_file_changes_its_fingerprint_with_its_head_tail_size_time_and_name(
        tmp_path) -> None:
    data = bytes(range(256)) * (3 * MIB // 256)  # 3 MiB: a head, a middle and a tail MiB
    f = _write(tmp_path / "g.safetensors", data)
    base = file_fingerprint(f)
    assert len(base) == 16 and base == file_fingerprint(str(f))
    assert file_fingerprint(_write(tmp_path / "copy.safetensors", data)) != base  # name
    changed = {}
    for where, at in (("head", 10), ("tail", len(data) - 10), ("last head byte", MIB - 1),
                      ("first tail byte", len(data) - MIB)):
        edited = bytearray(data)
        edited[at] ^= 0xFF
        changed[where] = file_fingerprint(_write(f, bytes(edited)))
    changed["size"] = file_fingerprint(_write(f, data + b"\0"))
    changed["time"] = file_fingerprint(_write(f, data, 1_800_000_000_000_000_000))
    assert all(v != base for v in changed.values()), changed
    assert file_fingerprint(_write(f, data)) == base  # the same bytes and time: the same


def test_a_small_file_is_read_whole(tmp_path) -> None:
    """Up to 2 MiB every byte counts, the second MiB too: a change there with the size and the
    mtime kept (a copy that preserves times) still changes the fingerprint."""
    for size in (2 * MIB, 3 * MIB // 2):
        data = b"x" * size
        f = _write(tmp_path / "c.pt", data, 1_700_000_000_000_000_000)
        base = file_fingerprint(f)
        for at in (5, MIB + 7, size - 1):
            edited = bytearray(data)
            edited[at] = ord("y")
            assert file_fingerprint(_write(f, bytes(edited), 1_700_000_000_000_000_000)) \
                != base, (size, at)


def test_a_folder_changes_with_any_file_in_it_and_reads_the_same_with_its_prefix(tmp_path
                                                                                  ) -> None:
    folder = tmp_path / "clip"
    (folder / "sub").mkdir(parents=True)
    _write(folder / "open_clip_config.json", b"{}")
    _write(folder / "sub" / "weights.bin", b"w" * 100)
    base = file_fingerprint(folder)
    assert file_fingerprint(f"local-dir:{folder}") == base
    _write(folder / "sub" / "weights.bin", b"v" + b"w" * 99)
    assert file_fingerprint(folder) != base
    _write(folder / "sub" / "weights.bin", b"w" * 100)
    assert file_fingerprint(folder) == base
    _write(folder / "extra.txt", b"")
    assert file_fingerprint(folder) != base


def test_a_large_file_costs_two_mebibytes_of_reading_whatever_its_size(tmp_path,
                                                                       monkeypatch) -> None:
    """A multi-gigabyte checkpoint is fingerprinted at every cache lookup: only its first and
    last MiB are read (its size and mtime stand for the middle)."""
    import builtins

    import coral_core.cache as cache

    read = []

    class Counting:
        def __init__(self, fh) -> None:
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.fh.close()

        def read(self, n: int | None = -1) -> bytes:
            data = self.fh.read() if n is None else self.fh.read(n)
            read.append(len(data))
            return data

        def seek(self, *args) -> int:
            return self.fh.seek(*args)

    monkeypatch.setattr(cache, "open", lambda *a, **k: Counting(builtins.open(*a, **k)),
                        raising=False)
    big = _write(tmp_path / "g.pkl", b"\1" * (5 * MIB))
    file_fingerprint(big)
    assert sum(read) == 2 * MIB
    read.clear()
    file_fingerprint(_write(tmp_path / "c.pt", b"\1" * (2 * MIB)))
    assert sum(read) == 2 * MIB  # a file of 2 MiB: read whole, once
