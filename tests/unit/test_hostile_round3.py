"""Hostile files, round three: every class of the issue ends in a named error, in a subprocess
(a crash or hang fails the test, not the run), within a memory budget.

Each case writes its file here and loads it in a fresh interpreter that prints one line:
REFUSED <message> or LOADED, and its peak RSS; the parent asserts no signal, no hang, the file
named in the message, and peak memory under 1.5 GB above an import-only baseline.
"""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from fabricate import (deep_pickle, nvlabs_network_dict, random_generator, torch_zip,
                       write_nvlabs_pickle)

ROOT = Path(__file__).resolve().parents[2]
BUDGET_KB = 1_500_000

_RUNNER = """
import resource, sys
from coral_core.errors import CoralError
try:
    {call}
    print("LOADED")
except CoralError as exc:
    print("REFUSED", type(exc).__name__, exc)
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


MEMORY_CAP = 8 * 2**30  # address space: a runaway allocation fails there, not the machine


def _cap_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _isolated(imports: str, call: str, timeout: float = 90) -> tuple[str, int]:
    code = textwrap.dedent(imports) + _RUNNER.format(call=call)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT, preexec_fn=_cap_memory)
    assert proc.returncode == 0, f"died with {proc.returncode}: {proc.stderr[-800:]}"
    rss = int(proc.stdout.rsplit("RSS", 1)[1].split()[0])
    return proc.stdout, rss


def _isolated_many(imports: str, calls: list[str], timeout: float = 120
                   ) -> tuple[list[str], int]:
    """``_isolated`` for several loads in one interpreter: one output line per call, in
    order, and the peak RSS over all of them."""
    body = "".join("try:\n    " + call + "\n    print('LOADED')\nexcept CoralError as exc:\n"
                   "    print('REFUSED', type(exc).__name__, str(exc).replace('\\n', ' '))\n"
                   for call in calls)
    code = (textwrap.dedent(imports) + "import resource\nfrom coral_core.errors import "
            "CoralError\n" + body
            + "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT, preexec_fn=_cap_memory)
    assert proc.returncode == 0, f"died with {proc.returncode}: {proc.stderr[-800:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("LOADED", "REFUSED"))]
    assert len(lines) == len(calls), proc.stdout[-800:]
    return lines, int(proc.stdout.rsplit("RSS", 1)[1].split()[0])


@pytest.fixture(scope="module")
def baseline_rss() -> int:
    _, rss = _isolated("import open_clip\nfrom coral_core.clip_model import load_clip\n"
                       "from coral_core.formats import load_generator\n", "pass")
    return rss


def _tiny_clip_cfg() -> dict:
    import copy

    from fabricate import TINY_CLIP_CFG

    return {"model_cfg": dict(copy.deepcopy(TINY_CLIP_CFG), quick_gelu=True)}


def _expect_refused(out: str, rss: int, baseline: int, path: Path, words: str = "") -> None:
    assert "REFUSED" in out, out
    assert str(path) in out, out
    assert words in out, out
    assert rss - baseline < BUDGET_KB, f"peak RSS {rss - baseline} kB above baseline"


LOAD_CLIP = "from coral_core.clip_model import load_clip\n"
LOAD_G = "from coral_core.formats import load_generator\n"


def test_deep_clip_weights_beside_a_config(tmp_path: Path, baseline_rss: int) -> None:
    """The crash of the issue: a nested torch-zip clip.bin beside a normal config."""
    weights = torch_zip(tmp_path / "clip.bin", deep_pickle())
    (tmp_path / "open_clip_config.json").write_text(json.dumps(_tiny_clip_cfg()))
    out, rss = _isolated(LOAD_CLIP, f"load_clip({str(weights)!r})")
    _expect_refused(out, rss, baseline_rss, weights, "nests objects")


def test_deep_clip_weights_in_a_local_dir_and_with_a_model_name(tmp_path: Path,
                                                                  baseline_rss: int) -> None:
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(_tiny_clip_cfg()))
    weights = torch_zip(folder / "open_clip_pytorch_model.bin", deep_pickle())
    out, rss = _isolated(LOAD_CLIP, f"load_clip('local-dir:{folder}')")
    _expect_refused(out, rss, baseline_rss, weights, "nests objects")
    named = torch_zip(tmp_path / "ViT-B-32.bin", deep_pickle())
    out, rss = _isolated(LOAD_CLIP, f"load_clip({str(named)!r}, 'ViT-B-32')")
    _expect_refused(out, rss, baseline_rss, named, "nests objects")


def test_deep_resume_checkpoint_is_read_by_the_bounded_reader(tmp_path: Path,
                                                              baseline_rss: int) -> None:
    ckpt = torch_zip(tmp_path / "e.ckpt.pt", deep_pickle())
    out, rss = _isolated("from coral_core.formats.weights import load_weights_file\n",
                         f"load_weights_file({str(ckpt)!r}, 'checkpoint')")
    _expect_refused(out, rss, baseline_rss, ckpt, "nests objects")


def test_absurd_config_beside_real_weights_is_refused_before_building(
        tmp_path: Path, clip_files: dict, baseline_rss: int) -> None:
    """Five absurd fields, each in its own folder beside real weights, loaded one after the
    other in one capped interpreter (one start-up instead of five): each is refused by name,
    and the peak over all five stays within the budget."""
    import shutil

    cases = [("text_cfg.width", 100_000), ("text_cfg.layers", 1000), ("vision_cfg.width", "abc"),
             ("text_cfg.vocab_size", 10 ** 9), ("vision_cfg.layers", True)]
    folders = []
    for i, (field, value) in enumerate(cases):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        weights = Path(shutil.copy(clip_files["safetensors"], folder / "w.safetensors"))
        cfg = _tiny_clip_cfg()
        part, key = field.split(".")
        cfg["model_cfg"][part][key] = value
        (folder / "open_clip_config.json").write_text(json.dumps(cfg))
        folders.append((folder, weights))
    out, rss = _isolated_many(LOAD_CLIP, [f"load_clip({str(w)!r})" for _, w in folders])
    for line, (folder, _), (field, value) in zip(out, folders, cases):
        _expect_refused(line, rss, baseline_rss, folder, field if value != 1000 else "")


def test_config_within_bounds_but_larger_than_the_weights_is_refused(
        tmp_path: Path, clip_files: dict, baseline_rss: int) -> None:
    import shutil

    weights = Path(shutil.copy(clip_files["safetensors"], tmp_path / "w.safetensors"))
    cfg = _tiny_clip_cfg()
    cfg["model_cfg"]["text_cfg"].update(width=2048, layers=48)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    out, rss = _isolated(LOAD_CLIP, f"load_clip({str(weights)!r})")
    _expect_refused(out, rss, baseline_rss, weights, "does not belong to these weights")


def test_state_dict_whose_key_names_declare_many_layers(tmp_path: Path, clip_files: dict,
                                                        baseline_rss: int) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(clip_files["safetensors"]))
    for i in range(1000):
        sd[f"transformer.resblocks.{i}.ln_1.weight"] = torch.ones(1)
    path = tmp_path / "many_layers.safetensors"
    save_file(sd, str(path))
    out, rss = _isolated(LOAD_CLIP, f"load_clip({str(path)!r})")
    _expect_refused(out, rss, baseline_rss, path, "does not belong")


@pytest.mark.parametrize("text", [b"{not json", b"[1, 2]", b"\xff\xfe\x00bad",
                                  b"[" * 100_000 + b"]" * 100_000])
def test_broken_config_files_name_the_file(tmp_path: Path, clip_files: dict,
                                           text: bytes) -> None:
    import shutil

    from coral_core.clip_model import load_clip
    from coral_core.errors import ModelFormatError

    weights = Path(shutil.copy(clip_files["safetensors"], tmp_path / "w.safetensors"))
    config = tmp_path / "open_clip_config.json"
    config.write_bytes(text)
    with pytest.raises(ModelFormatError) as err:
        load_clip(weights)
    assert str(config) in str(err.value)


def test_zip_whose_pickle_inflates_to_a_gibibyte(tmp_path: Path, baseline_rss: int) -> None:
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as f:
            chunk = b"\x00" * (1 << 24)
            for _ in range(64):
                f.write(chunk)
    assert path.stat().st_size < 2 << 20
    for loader, call in ((LOAD_G, "load_generator"), (LOAD_CLIP, "load_clip")):
        out, rss = _isolated(loader, f"{call}({str(path)!r})", timeout=60)
        _expect_refused(out, rss, baseline_rss, path)


def test_latent_bombs_and_complex_latents(tmp_path: Path, baseline_rss: int) -> None:
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, w=np.zeros((40_000, 18, 512), dtype=np.float32))
    cplx = tmp_path / "complex.npz"
    np.savez(cplx, w=np.ones((1, 18, 512), dtype=np.complex64))
    imports = "from coral_core.latents import load_latents\n"
    out, rss = _isolated(imports, f"load_latents({str(bomb)!r})")
    _expect_refused(out, rss, baseline_rss, bomb, "compression bomb")
    out, rss = _isolated(imports, f"load_latents({str(cplx)!r})")
    _expect_refused(out, rss, baseline_rss, cplx, "real numbers")


def test_safetensors_header_nested_deeply(tmp_path: Path) -> None:
    from coral_core.errors import ModelFormatError
    from coral_core.formats import load_generator

    header = b'{"__metadata__": {"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ModelFormatError) as err:
        load_generator(path)
    assert str(path) in str(err.value) and "nests" in str(err.value)


def _tampered_nvlabs(tmp_path: Path, change: Callable[[dict], None]) -> Path:
    G = random_generator()
    top = nvlabs_network_dict(G)
    change(top["G_ema"].state)
    return write_nvlabs_pickle(G, tmp_path / "G.pkl", top=top)


@pytest.mark.parametrize("change", [
    lambda st: st.update(img_resolution="abc"),
    lambda st: st.update(_init_kwargs=[1, 2]),
    lambda st: st.update(z_dim=math.nan),
], ids=["resolution-text", "init-kwargs-list", "z-dim-nan"])
def test_nvlabs_records_with_bad_fields(tmp_path: Path, change: Callable[[dict], None]) -> None:
    from coral_core.errors import ModelFormatError
    from coral_core.formats import load_generator

    path = _tampered_nvlabs(tmp_path, change)
    with pytest.raises(ModelFormatError) as err:
        load_generator(path)
    assert str(path) in str(err.value)


def test_nan_weight_behind_a_valid_hash_is_refused(tmp_path: Path) -> None:
    from coral_core.errors import ModelFormatError
    from coral_core.formats import load_generator, save_generator

    G = random_generator()
    with torch.no_grad():
        next(iter(G.synthesis.parameters())).view(-1)[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_generator(G, path)
    with pytest.raises(ModelFormatError) as err:
        load_generator(path)
    assert str(path) in str(err.value) and "NaN" in str(err.value)


def test_nan_clip_weights_are_refused(tmp_path: Path, clip_files: dict) -> None:
    from safetensors.torch import load_file, save_file

    from coral_core.clip_model import load_clip
    from coral_core.errors import ModelFormatError

    sd = load_file(str(clip_files["safetensors"]))
    sd["ln_final.weight"][0] = float("inf")
    path = tmp_path / "nan_clip.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ModelFormatError) as err:
        load_clip(path)
    assert "ln_final.weight" in str(err.value)


def test_a_real_config_beside_real_weights_still_loads(tmp_path: Path, clip_files: dict) -> None:
    """A real config beside real weights still loads, with the same embeddings as the
    weights loaded through the local-dir folder."""
    from coral_core.clip_model import load_clip

    a = load_clip(clip_files["safetensors"])
    b = load_clip(clip_files["local_dir"])
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(a.encode_image(img), b.encode_image(img), atol=1e-6)
