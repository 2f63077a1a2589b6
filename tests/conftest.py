"""Shared fixtures. Unit tests need no ComfyUI host; e2e tests start a real one."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# computed catalogues go to a throw-away cache, never the user's ~/.cache
os.environ.setdefault("CORAL_CACHE_DIR", tempfile.mkdtemp(prefix="coral-test-cache-"))
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for p in (str(TESTS), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

import pytest  # noqa: E402
import torch  # noqa: E402

# (set by whoever ran the suite, not by this file in the process that started the workers)
_OMP_GIVEN = bool(os.environ.get("OMP_NUM_THREADS")) and \
    not os.environ.get("CORAL_TESTS_SET_THREADS")
# 2 threads on the 2-core machine; a job run beside others says OMP_NUM_THREADS=1 and gets it
# (two suites at 2 threads each spin at OpenMP barriers and run many times slower)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0)
                      or max(1, min(2, os.cpu_count() or 1)))
# ... and the CLI, run in-process by the tests, keeps it (its one-thread policy for small
# generators applies only when OMP_NUM_THREADS is unset; subprocess tests set their own)
if not os.environ.get("OMP_NUM_THREADS"):
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    os.environ["CORAL_TESTS_SET_THREADS"] = "1"


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist workers share the cores: each gets its share of the threads (two workers
    on two cores: one each; at two threads each the unit tier stalled for minutes), unless
    OMP_NUM_THREADS was set by whoever ran the suite."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers and not _OMP_GIVEN:
        threads = max(1, min(2, os.cpu_count() or 1) // int(workers))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@pytest.fixture(scope="session")
def clip_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fabricate import write_clip_files

    return write_clip_files(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def G():
    """A tiny random generator (no conv clamp), the unit tests' default model."""
    from fabricate import random_generator, tiny_config

    return random_generator(tiny_config(conv_clamp=None))


@pytest.fixture(scope="module")
def clip(clip_files):
    """The tiny fabricated CLIP, loaded from its open_clip local-dir folder."""
    from coral_core.clip_model import load_clip

    return load_clip(clip_files["local_dir"])


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A real ComfyUI 0.3.75 server with this pack mounted (started once per session)."""
    from comfy_server import ComfyServer

    srv = ComfyServer(tmp_path_factory.mktemp("comfy")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def newest_front_end_server(tmp_path_factory: pytest.TempPathFactory):
    """The same host serving the newest front end (comfyui-frontend-package 1.58.1, unpacked
    by scripts/setup.sh), which users install over the bundled one."""
    from comfy_server import HOST, ComfyServer

    static = HOST.parent / "frontend-1.58.1"
    if not (static / "index.html").is_file():
        pytest.skip(f"no front end at {static}: run ./scripts/setup.sh")
    srv = ComfyServer(tmp_path_factory.mktemp("comfy_newest"), front_end=static).start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _fit_check_off_for_random_clips(request: pytest.FixtureRequest,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The prompt fit check (coral_core/editing/fit.py) rightly finds nothing to aim at with a
    random-weight CLIP and leaves every image unchanged; tests that use the fabricated CLIP to
    check training mechanics switch it off (tests marked ``fit_check`` keep it)."""
    if request.node.get_closest_marker("fit_check"):
        return
    if not {"clip", "clip_files"} & set(request.fixturenames):
        return
    from coral_core.editing import fit

    monkeypatch.setattr(fit, "MIN_RELATIVE_RANGE", float("-inf"))
    monkeypatch.setattr(fit, "ALREADY_MARGIN", float("-inf"))
    monkeypatch.setattr(fit, "MIN_REACH", float("-inf"))
    monkeypatch.setattr(fit, "MAX_REACH", float("inf"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/e2e are the end-to-end tier (``-m e2e``); the rest is the unit tier
    (``-m "not e2e"``)."""
    for item in items:
        if "/e2e/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)
