"""Nothing is lost: a result is never thrown away on a failed write, two jobs with one output
both keep their result, killed writes' temp files are swept, and prompts that could only fail
after training are refused before it."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from coral_core.atomic import atomic_path, file_stamp, save_keeping_result
from coral_core.errors import InputError


def _writer(text: str):
    def save(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return save


def test_a_second_job_with_the_same_output_keeps_both_results(tmp_path: Path) -> None:
    out = tmp_path / "e.safetensors"
    stamp_a = file_stamp(out)
    stamp_b = file_stamp(out)
    first, notes_a = save_keeping_result(_writer("A"), out, stamp_a)
    second, notes_b = save_keeping_result(_writer("B"), out, stamp_b)
    assert first == out and not notes_a
    assert second != out and second.name == "e-2.safetensors" and notes_b
    assert out.read_text() == "A" and second.read_text() == "B"


def test_rerunning_over_ones_own_old_output_replaces_it(tmp_path: Path) -> None:
    out = tmp_path / "e.safetensors"
    out.write_text("old")
    written, notes = save_keeping_result(_writer("new"), out, file_stamp(out))
    assert written == out and out.read_text() == "new" and not notes


def test_a_failed_write_keeps_the_result_and_says_where(tmp_path: Path) -> None:
    out = tmp_path / "full_disk" / "e.safetensors"
    calls = []

    def save(path: Path) -> None:
        calls.append(path)
        if path == out:
            raise OSError(28, "No space left on device")
        _writer("result")(path)

    with pytest.raises(InputError) as err:
        save_keeping_result(save, out, None)
    rescued = calls[-1]
    assert rescued != out and rescued.read_text() == "result"
    assert str(rescued) in str(err.value) and "No space left" in str(err.value)
    rescued.unlink()


def test_stale_temp_files_of_killed_writes_are_swept(tmp_path: Path) -> None:
    target = tmp_path / "e.safetensors"
    stale = tmp_path / ".e.safetensors.abc123.tmp"
    fresh = tmp_path / ".e.safetensors.def456.tmp"
    stale.write_bytes(b"")
    fresh.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    with atomic_path(target) as tmp:
        tmp.write_text("ok")
    assert target.read_text() == "ok"
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize("prompt,words", [("a red \ud800 circle", "cannot be written"),
                                          ("x" * 5000, "characters")])
def test_prompts_that_would_fail_later_are_refused_before_training(prompt: str,
                                                                   words: str) -> None:
    from coral_core.editing.trainer import TrainConfig
    from fabricate import random_generator

    with pytest.raises(InputError) as err:
        TrainConfig(prompt=prompt).validate(random_generator())
    assert words in str(err.value)


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path: Path, monkeypatch,
                                                        capsys) -> None:
    """Disk full while writing: PIL's error names no file and safetensors raises its own
    type; both reach the user as one line naming the output, with no temp file left."""
    import errno

    from PIL import Image

    from coral_core import cli

    def full(self, fp, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    from coral_core.world import assets

    out = tmp_path / "gen"
    assert cli.main(["generate", "--generator", str(assets.DEMO_GENERATOR), "--seeds", "0",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'seed0000.png'}: No space left on device" in err
    assert not list(out.glob(".*.tmp"))

    class SafetensorError(Exception):
        pass

    from coral_core.atomic import atomic_path

    target = tmp_path / "edit.safetensors"
    try:
        with atomic_path(target):
            raise SafetensorError("Error while serializing: IoError(No space left on device)")
    except OSError as exc:
        assert exc.filename == str(target) and "No space left" in str(exc)
    else:
        raise AssertionError("no error")
    assert not list(tmp_path.glob(".*.tmp"))
