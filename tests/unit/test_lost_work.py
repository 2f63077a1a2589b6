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


def test_two_jobs_ending_at_once_cannot_both_claim_the_output(tmp_path: Path) -> None:
    """Job A is inside its write when job B (same --out, also started before A wrote) checks
    the output: B must wait for A and then take a new name, not replace A's result."""
    import threading

    out = tmp_path / "e.safetensors"
    inside = threading.Event()
    claims: dict[str, tuple[Path, list[str]]] = {}

    def slow_save(path: Path) -> None:
        inside.set()
        time.sleep(0.3)
        path.write_text("A")

    a = threading.Thread(target=lambda: claims.setdefault(
        "a", save_keeping_result(slow_save, out, None)))
    a.start()
    inside.wait(5)
    claims["b"] = save_keeping_result(_writer("B"), out, None)
    a.join()
    assert claims["a"][0] == out and out.read_text() == "A"
    assert claims["b"][0] == tmp_path / "e-2.safetensors" and claims["b"][0].read_text() == "B"


def test_a_killed_writers_temp_file_is_swept_by_the_next_write(tmp_path: Path) -> None:
    """A temp file names its writer: one whose writer has ended goes at the next write a
    minute later, not an hour later; a live writer's (or this process's) stays."""
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    target = tmp_path / "g.safetensors"
    killed = tmp_path / f".g.safetensors.{ended.stdout.strip()}.k1.tmp"
    live = tmp_path / ".g.safetensors.1.k2.tmp"  # pid 1 runs as long as the machine does
    own = tmp_path / f".g.safetensors.{os.getpid()}.k3.tmp"
    just_killed = tmp_path / f".g.safetensors.{ended.stdout.strip()}.k4.tmp"
    two_minutes_ago = time.time() - 120
    for temp in (killed, live, own, just_killed):
        temp.write_bytes(b"half a file")
        if temp is not just_killed:
            os.utime(temp, (two_minutes_ago, two_minutes_ago))
    with atomic_path(target) as tmp:
        assert tmp.name.startswith(f".g.safetensors.{os.getpid()}.")
        tmp.write_text("ok")
    assert not killed.exists()
    assert live.exists() and own.exists() and just_killed.exists()


def test_every_rescued_result_keeps_its_own_file(tmp_path: Path, monkeypatch) -> None:
    """Two failed writes of results with one name: the second rescue must not replace the
    first."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    out = tmp_path / "full" / "e.safetensors"
    rescued = []
    for text in ("first", "second"):
        def save(path: Path, text: str = text) -> None:
            if path == out:
                raise OSError(28, "No space left on device")
            rescued.append(path)
            _writer(text)(path)
        with pytest.raises(InputError):
            save_keeping_result(save, out, None)
    assert len(set(rescued)) == 2
    assert [p.read_text() for p in rescued] == ["first", "second"]


def test_a_prompt_longer_than_the_clip_reads_is_reported_before_training(G, clip) -> None:
    from coral_core.editing.trainer import TrainConfig, train_edit
    from coral_core.progress import Reporter

    reports: list[dict] = []
    prompt = "a red circle with a blue edge " * 10  # one thing (no word that joins two)
    result = train_edit(G, clip, TrainConfig(prompt=prompt, steps=1, batch=1, prior_samples=0),
                        reporter=Reporter(lambda s, t, info: reports.append(info)))
    first = reports[0]
    assert first.get("phase") == "prompt" and "tokens" in first["warning"]
    assert any("the rest was ignored" in w for w in result.edit.info["warnings"])
