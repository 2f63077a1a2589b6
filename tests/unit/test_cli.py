"""The ``coral`` command line: info, convert, generate, and clean errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coral_core.cli import main
from coral_core.editing.config import TrainConfig
from coral_core.formats import load_generator
from coral_core.stylegan.generator import image_to_uint8
from fabricate import random_generator, write_nvlabs_pickle


def test_info_convert_generate(tmp_path, capsys) -> None:
    G = random_generator()
    pkl = write_nvlabs_pickle(G, tmp_path / "net.pkl")
    assert main(["info", str(pkl), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "nvlabs-pkl" and info["num_ws"] == 8
    assert main(["convert", str(pkl), str(tmp_path / "net.safetensors")]) == 0
    assert main(["convert", str(pkl), str(tmp_path / "net_ros.pt")]) == 0
    assert load_generator(tmp_path / "net_ros.pt").format == "rosinality"
    assert main(["generate", "--generator", str(tmp_path / "net.safetensors"), "--seeds", "2-4",
                 "--truncation", "0.7", "--out", str(tmp_path / "out")]) == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["seed0002.png", "seed0003.png", "seed0004.png"]
    with torch.no_grad():
        expected = image_to_uint8(G.synthesize(G.mapping_ws(G.z_from_seeds([3]), 0.7)))[0]
    got = np.asarray(Image.open(tmp_path / "out" / "seed0003.png"))
    assert np.array_equal(got, expected)


def test_user_errors_exit_2_with_one_line(tmp_path, capsys) -> None:
    (tmp_path / "bad.pkl").write_bytes(b"\x80\x04garbage")
    assert main(["info", str(tmp_path / "bad.pkl")]) == 2
    err = capsys.readouterr().err
    assert "bad.pkl" in err and "Traceback" not in err
    assert main(["generate", "--generator", str(tmp_path / "bad.pkl"), "--seeds", "x",
                 "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("omp", [None, "2"])
def test_the_cli_runs_a_small_generator_on_one_thread_unless_the_user_chose(omp) -> None:
    """The CLI's thread policy (devices.cli_threads_for): the demo-sized generator runs on one
    thread (two spinning threads ran 2x slower beside other jobs); OMP_NUM_THREADS wins."""
    import os
    import subprocess
    import sys

    code = ("import argparse, torch\n"
            "from coral_core.commands.edit import _generator\n"
            "G = _generator(argparse.Namespace(generator=None, device='cpu'))\n"
            "print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp:
        env["OMP_NUM_THREADS"] = omp
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env, cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ("1" if omp is None else "2")


def test_prepare_builds_once_and_lists_what_is_cached(tmp_path, clip_files, capsys,
                                                      monkeypatch) -> None:
    """``coral prepare`` builds the catalogue and the sample bank a first edit would build,
    reports the bank's progress, and a second run (like the first edit after it) reuses them."""
    from coral_core.editing import prior

    G = random_generator()
    gen = write_nvlabs_pickle(G, tmp_path / "net.pkl")
    cache = tmp_path / "cache"
    assert main(["prepare", "--list", "--cache-dir", str(cache)]) == 0
    assert "nothing cached yet" in capsys.readouterr().out
    args = ["prepare", "--generator", str(gen), "--clip", str(clip_files["local_dir"]),
            "--device", "cpu", "--cache-dir", str(cache)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    n = TrainConfig(prompt="x").prior_samples  # the library's default, no number of its own
    assert "segment catalogue: ready" in out and f"sample bank ({n} samples" in out
    assert err.splitlines()[0] == f"sample bank 0/{n}" and err.splitlines()[-1].endswith(f"{n}/{n}")
    names = sorted(p.name.split("-")[0] for p in cache.iterdir())
    assert names == ["bank", "catalogue"]

    def no_rebuild(*_a, **_k):
        raise AssertionError("prepared data was rebuilt")
    monkeypatch.setattr(prior, "build_sample_bank", no_rebuild)
    assert main(args) == 0
    assert main(["prepare", "--list", "--cache-dir", str(cache)]) == 0
    listing = capsys.readouterr().out
    assert "sample bank" in listing and "segment catalogue" in listing
    assert "old bank" not in listing
    # a bank cached before the CLIP read the displayed picture is never used: listed so
    bank = next(cache.glob("bank-*"))
    bank.rename(bank.with_name(bank.name.replace("-shown", "")))
    assert main(["prepare", "--list", "--cache-dir", str(cache)]) == 0
    listing = capsys.readouterr().out
    assert "old bank (unused)" in listing and "sample bank" not in listing
    assert main(["prepare", "--generator", str(tmp_path / "missing.pkl"),
                 "--cache-dir", str(cache)]) == 2
    assert "missing.pkl" in capsys.readouterr().err


def test_bench_startup_times_both_commands_in_new_processes(capsys) -> None:
    from coral_core.commands.bench import bench_startup

    got = bench_startup(repeats=1)
    assert set(got) == {"coral --help", "coral apply (demo, one seed)"}
    assert all(0 < t < 300 for t in got.values())
    assert "coral --help" in capsys.readouterr().out

