"""Bad values and arguments: each refused with a message that names the input and what was
expected, at the engine boundary (so the CLI and the nodes inherit it), never a silent black
image or a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coral_core.errors import InputError
from coral_core.images import load_photo
from coral_core.seeds import parse_seeds
from coral_core.validate import finite, whole
from fabricate import random_generator, tiny_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "abc", None])
def test_non_finite_numbers_are_refused_by_name(value) -> None:
    with pytest.raises(InputError, match="strength"):
        finite("strength", value)


def test_ranges_and_whole_numbers() -> None:
    assert finite("x", "0.5", 0, 1) == 0.5
    with pytest.raises(InputError, match="steps must be in 1.."):
        whole("steps", 0)
    with pytest.raises(InputError, match="steps"):
        whole("steps", -5)
    with pytest.raises(InputError, match="whole number"):
        whole("steps", 2.5)


def test_truncation_nan_is_refused() -> None:
    G = random_generator(tiny_config())
    with pytest.raises(InputError, match="truncation"):
        G.mapping_ws(G.z_from_seeds([0]), float("nan"))


def test_apply_refuses_bad_strength_and_threshold(tmp_path) -> None:
    from coral_core.editing.apply import apply_edits

    G = random_generator(tiny_config())
    ws = G.mapping_ws(G.z_from_seeds([0]))
    for kwargs in ({"strength": float("nan")}, {"strength": 1e6}, {"threshold": 2.0},
                   {"strength": [1.0, float("inf")]}):
        with pytest.raises(InputError):
            apply_edits(G, ws, [object()], **kwargs)  # refused before the edit is used


def test_train_config_refuses_bad_numbers() -> None:
    from coral_core.editing.trainer import TrainConfig

    G = random_generator(tiny_config())
    for kwargs, name in (({"steps": 0}, "steps"), ({"steps": -5}, "steps"),
                         ({"lr": float("nan")}, "lr"), ({"num_segments": 0}, "segments"),
                         ({"batch": 0}, "batch"), ({"truncation": float("inf")}, "truncation")):
        with pytest.raises(InputError, match=name):
            TrainConfig(prompt="a red circle", **kwargs).validate(G)


def test_huge_seed_ranges_are_refused_at_once() -> None:
    with pytest.raises(InputError, match="more than"):
        parse_seeds("0-100000000")


def test_photo_modes_are_converted_not_misread(tmp_path: Path) -> None:
    grey16 = np.full((16, 16), 32768, np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    got = load_photo(tmp_path / "g16.png")
    assert got.shape == (16, 16, 3) and 120 <= int(got[0, 0, 0]) <= 136  # mid grey, not white

    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    rgb = load_photo(tmp_path / "cmyk.jpg")
    assert rgb.shape == (16, 16, 3) and rgb[0, 0, 0] > 200 and rgb[0, 0, 1] < 60  # red

    pal = Image.new("P", (16, 16))
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 16, 16))
    pal.save(tmp_path / "pal.png")
    assert tuple(load_photo(tmp_path / "pal.png")[0, 0]) == (0, 0, 255)  # blue, not index 1


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    Image.new("L", (9000, 9000)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="too large"):
        load_photo(tmp_path / "big.png")


def _coral(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coral_core", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "PYTHONPATH": str(ROOT)})


def test_cli_reports_bad_arguments_without_tracebacks(tmp_path: Path) -> None:
    gen = tmp_path / "g.safetensors"
    from coral_core.formats import save_generator

    save_generator(random_generator(tiny_config()), gen)
    cases = [
        ["generate", "--generator", str(gen), "--truncation", "nan", "--out", str(tmp_path)],
        ["generate", "--generator", str(tmp_path / "missing.pkl"), "--out", str(tmp_path)],
        ["generate", "--generator", str(gen), "--seeds", "0-100000000", "--out",
         str(tmp_path)],
        ["invert", "--generator", str(gen), "--image", str(tmp_path / "none.png"), "--out",
         str(tmp_path / "l.safetensors")],
    ]
    for argv in cases:
        proc = _coral(*argv)
        assert proc.returncode == 2, (argv, proc.stderr[-400:])
        assert "Traceback" not in proc.stderr and "error:" in proc.stderr, proc.stderr


def test_unwritable_output_is_refused_before_work(tmp_path: Path) -> None:
    from coral_core.atomic import ensure_writable

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write"):
        ensure_writable(blocker / "sub" / "edit.safetensors")
    with pytest.raises(InputError, match="is a folder"):
        ensure_writable(tmp_path)


def test_seeds_given_as_numbers_are_checked_like_text() -> None:
    """Found by mutmut: the list form was never tested, and a list or an int skipped the
    range check, so a negative seed reached numpy as a raw error."""
    assert parse_seeds([3, 5]) == [3, 5] and parse_seeds(7) == [7]
    assert parse_seeds("1,5,9-10") == [1, 5, 9, 10]
    for bad in ([-1], -5, [2 ** 32], [], [True], ["3"]):
        with pytest.raises(InputError):
            parse_seeds(bad)  # type: ignore[arg-type]
