"""Hostile files: nothing from a file ever runs, and no file can crash or hang the process.

The corpus is generated here (never committed as binaries). Crash-prone cases are loaded in a
subprocess with a time limit, so a segmentation fault or a hang fails the test instead of
killing the test run (or, in production, the ComfyUI server).
"""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from coral_core.errors import InputError, ModelFormatError, UnsafeFileError
from coral_core.formats import safe_pickle
from fabricate import write_hostile_torchscript

ROOT = Path(__file__).resolve().parents[2]


def _run_isolated(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture
def hostile_archive(tmp_path: Path) -> tuple[Path, Path]:
    target = tmp_path / "victim.txt"
    target.write_text("original")
    return write_hostile_torchscript(tmp_path / "ViT-B-32.pt", target, "pwned!!!"), target


def test_the_hostile_archive_really_writes_when_executed(hostile_archive) -> None:
    """Guards the guard: torch.jit.load (what the loader used to call) does run the payload,
    so the tests below would fail if a loader executed the archive."""
    archive, target = hostile_archive
    proc = _run_isolated(f"import torch; torch.jit.load({str(archive)!r})")
    assert proc.returncode == 0, proc.stderr
    assert target.read_text() == "pwned!!!"


def test_clip_loader_reads_torchscript_as_data(hostile_archive) -> None:
    from coral_core.clip_model import load_clip

    archive, target = hostile_archive
    with pytest.raises(ModelFormatError) as err:
        load_clip(archive)
    assert str(archive) in str(err.value)
    assert target.read_text() == "original"


def test_pth_chain_is_not_created(tmp_path: Path) -> None:
    """The second attack: a .pth dropped into a site folder would run at the next start."""
    from coral_core.clip_model import load_clip

    site = tmp_path / "site"
    site.mkdir()
    pth = site / "zz_evil.pth"
    archive = write_hostile_torchscript(tmp_path / "clip.pt", pth,
                                        "import os; os.system('touch /tmp/coral_pwned')\n")
    with pytest.raises(ModelFormatError):
        load_clip(archive)
    assert not pth.exists()


def test_lpips_torchscript_is_refused_not_run(hostile_archive) -> None:
    from coral_core.inversion import Perceptual

    archive, target = hostile_archive
    with pytest.raises(InputError) as err:
        Perceptual(vgg16_path=str(archive))
    assert str(archive) in str(err.value) and "runs code" in str(err.value)
    assert target.read_text() == "original"


@pytest.mark.source_scan
def test_no_engine_module_calls_jit_load() -> None:
    offenders = [p for p in (ROOT / "coral_core").rglob("*.py")
                 if re.search(r"jit\.load\(|jit\._load", p.read_text())]
    assert offenders == []


def _deep_tuple_pickle(depth: int) -> bytes:
    # {(((...),),): 1} built by opcodes directly: EMPTY_DICT, EMPTY_TUPLE, TUPLE1 x depth.
    return b"\x80\x04}" + b")" + b"\x85" * depth + b"K\x01s."


@pytest.mark.parametrize("container", ["plain", "torch-zip"])
def test_deeply_nested_pickle_is_refused_without_crashing(tmp_path: Path,
                                                          container: str) -> None:
    data = _deep_tuple_pickle(200_000)
    path = tmp_path / ("deep.pkl" if container == "plain" else "deep.pt")
    if container == "plain":
        path.write_bytes(data)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", data)
            zf.writestr("archive/version", "3\n")
    proc = _run_isolated(f"""
        from coral_core.formats import load_generator
        from coral_core.errors import ModelFormatError
        try:
            load_generator({str(path)!r})
        except ModelFormatError as exc:
            print("REFUSED", exc)
    """)
    assert proc.returncode == 0, f"loader died with {proc.returncode}: {proc.stderr[-500:]}"
    assert "REFUSED" in proc.stdout and "nests objects" in proc.stdout
    assert str(path) in proc.stdout


def test_structure_check_accepts_ordinary_nesting() -> None:
    data = pickle.dumps({"a": [1, (2, 3), {"b": [[4]]}], "c": "x" * 10}, protocol=4)
    safe_pickle.check_pickle_structure(data, "ok.pkl")
    safe_pickle.check_pickle_structure(_deep_tuple_pickle(900), "ok.pkl")
    with pytest.raises(ModelFormatError):
        safe_pickle.check_pickle_structure(_deep_tuple_pickle(1100), "deep.pkl")


_CANARY_OPCODE_ATTACKS = {
    # GLOBAL + REDUCE
    "reduce": lambda c: b"\x80\x02cposix\nsystem\n(V" + f"touch {c}".encode() + b"\ntR.",
    # STACK_GLOBAL + REDUCE
    "stack_global": lambda c: (b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x8c"
                               + bytes([len(f"touch {c}")]) + f"touch {c}".encode()
                               + b"\x85R."),
    # INST (protocol 0 class instantiation with arguments)
    "inst": lambda c: b"(V" + f"touch {c}".encode() + b"\nios\nsystem\n.",
    # OBJ (protocol 1)
    "obj": lambda c: b"(cos\nsystem\nV" + f"touch {c}".encode() + b"\no.",
    # BUILD on an allowlisted class with a crafted __setstate__ argument
    "build": lambda c: b"\x80\x02ccollections\nOrderedDict\n)R}V__setstate__\ncos\nsystem\nsb.",
}


@pytest.mark.parametrize("attack", sorted(_CANARY_OPCODE_ATTACKS))
def test_opcode_attacks_are_refused(tmp_path: Path, attack: str) -> None:
    from coral_core.formats import load_generator

    canary = tmp_path / "canary"
    path = tmp_path / f"{attack}.pkl"
    path.write_bytes(_CANARY_OPCODE_ATTACKS[attack](canary))
    with pytest.raises((UnsafeFileError, ModelFormatError)) as err:
        load_generator(path)
    assert str(path) in str(err.value)
    assert not canary.exists()


def test_allowlist_is_exactly_the_data_constructors() -> None:
    """Widening the allowlist (e.g. to any ``torch.*`` global) must fail a test."""
    assert set(safe_pickle._ALLOWED) == {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"),
        ("dnnlib.util", "EasyDict"),
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch.storage", "_load_from_bytes"),
        ("numpy", "dtype"), ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("builtins", "set"), ("__builtin__", "set"), ("builtins", "frozenset"),
        ("__builtin__", "frozenset"),
        ("_codecs", "encode"),
    }
    import io

    unpickler = safe_pickle.RestrictedUnpickler(io.BytesIO(b""), "probe.pkl")
    for module, name in [("torch", "load"), ("torch", "from_file"), ("torch.jit", "load"),
                         ("torch._utils", "_rebuild_qtensor"), ("builtins", "eval"),
                         ("numpy", "load"), ("torch.serialization", "load")]:
        with pytest.raises(UnsafeFileError):
            unpickler.find_class(module, name)
    assert isinstance(unpickler.find_class("torch", "FloatStorage"), safe_pickle._StorageType)
    with pytest.raises(UnsafeFileError):
        safe_pickle._latin1_encode("x", "rot13")


def test_torchscript_reader_returns_the_archive_tensors(clip_files) -> None:
    from coral_core.formats.torchscript import read_torchscript_tensors

    tensors = read_torchscript_tensors(clip_files["torchscript"])
    assert "visual.conv1.weight" in tensors and "token_embedding.weight" in tensors
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())


def test_nvlabs_pickle_with_a_shared_module_dag_is_refused_quickly(tmp_path: Path) -> None:
    """40 levels of modules that each name the next one twice: 2^40 paths if walked naively
    (the probe saw a hang); refused in well under the time limit instead."""
    from collections import OrderedDict

    from fabricate import NVLABS_SOURCE, PersistentObj, nvlabs_network_dict, random_generator

    top = nvlabs_network_dict(random_generator())
    node = PersistentObj("Leaf", {"_parameters": OrderedDict(), "_modules": OrderedDict()},
                         NVLABS_SOURCE)
    for _ in range(40):
        node = PersistentObj("Shared", {"_parameters": OrderedDict(),
                                        "_modules": OrderedDict(a=node, b=node)}, NVLABS_SOURCE)
    top["G_ema"].state["_modules"]["extra"] = node
    path = tmp_path / "dag.pkl"
    path.write_bytes(pickle.dumps(top, protocol=4))
    proc = _run_isolated(f"""
        from coral_core.formats import load_generator
        from coral_core.errors import ModelFormatError
        try:
            load_generator({str(path)!r})
        except ModelFormatError as exc:
            print("REFUSED", exc)
    """, timeout=60)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "REFUSED" in proc.stdout and str(path) in proc.stdout
