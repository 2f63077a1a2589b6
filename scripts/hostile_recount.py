#!/usr/bin/env python3
"""Re-count the hostile-file classes of issue 27 through the CLI, as a user would meet them.

Builds a corpus of hostile and broken files (deep pickles, bombs, absurd configs, bad metadata,
non-finite weights...), hands each to the ``coral`` command that reads that kind of file, in its
own process with a memory cap and a time limit, and prints per class: inputs, named errors (exit
2 with one ``error:`` line naming the file), correct loads, raw tracebacks, crashes (signals),
hangs, and the peak RSS above an import-only baseline. Run from the repository root:

    .venv/bin/python scripts/hostile_recount.py [--out DIR] [--only CLASS]

Takes about 10-15 minutes on 2 CPU cores (each input starts a fresh interpreter).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

MEMORY_CAP = 9 * 2**30
TIMEOUT = 180
WRAPPER = """
import json, os, resource, sys
from coral_core.cli import main
try:
    code = main(sys.argv[1:])
finally:
    sys.stderr.write("\\nRSS_KB %d\\n" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    listed = os.environ.get("CORAL_RECOUNT_LIST")
    if listed:  # what the run left in a folder that vanishes with it (a private tmpfs)
        left = [os.path.relpath(os.path.join(d, f), listed) for d, _, fs in os.walk(listed)
                for f in fs]
        sys.stderr.write("LEFT %s\\n" % json.dumps(sorted(left)))
sys.exit(code)
"""
# A folder that is a full disk for one run: a private tmpfs (a mount namespace of the run's
# own, so no root is needed where user namespaces are allowed), filled to the last block.
FULL_DISK = ('mount -t tmpfs -o size=512k tmpfs "$0" || exit 97; mkdir -p "$0/out"; '
             'dd if=/dev/zero of="$0/fill" bs=4k 2>/dev/null; exec "$@"')


@dataclass
class Case:
    cls: str          # the class
    name: str         # this input
    argv: list[str]   # the coral command that reads it
    file: Path        # the file the error must name
    expect_load: bool = False  # a valid file beside the hostile ones: it must load
    disk: Path | None = None   # this folder is a full disk during the run
    twice: bool = False        # two processes run the command at once (two writers, one --out)
    prepare: Callable[[], None] | None = None  # builds the state the run meets (a killed write)
    verify: Callable[[dict], str | None] | None = None  # after the run: what was lost, or None


def _deep_pickle(depth: int) -> bytes:
    from fabricate import deep_pickle

    return deep_pickle(depth)


def _torch_zip(path: Path, data_pkl: bytes) -> Path:
    from fabricate import torch_zip

    return torch_zip(path, data_pkl)


def _train(clip: Path | str, out: Path, *extra: str) -> list[str]:
    return ["train", "--clip", str(clip), "--prompt", "a red circle", "--seeds", "0",
            "--steps", "1", "--prior-samples", "0", "--out", str(out), *extra]


def clip_cases(work: Path) -> list[Case]:
    from fabricate import TINY_CLIP_CFG, write_clip_files

    files = write_clip_files(work / "clip_ok")
    cases = [Case("valid CLIP (control)", "local-dir", _train(files["local_dir"],
                                                             work / "ok.safetensors"),
                  files["local_dir"], expect_load=True)]
    config = json.loads((files["local_dir"] / "open_clip_config.json").read_text())
    for depth in (1_500, 20_000, 200_000):
        for layout in ("beside-config", "local-dir", "model-name"):
            d = work / f"deep_clip_{depth}_{layout}"
            d.mkdir()
            if layout == "local-dir":
                (d / "open_clip_config.json").write_text(json.dumps(config))
                target = _torch_zip(d / "open_clip_pytorch_model.bin", _deep_pickle(depth))
                cases.append(Case("deep pickle as CLIP", f"{depth} {layout}",
                                  _train(d, d / "e.safetensors"), d))
                continue
            target = _torch_zip(d / "clip.bin", _deep_pickle(depth))
            extra = ["--clip-model", "ViT-B-32"] if layout == "model-name" else []
            if layout == "beside-config":
                (d / "open_clip_config.json").write_text(json.dumps(config))
            cases.append(Case("deep pickle as CLIP", f"{depth} {layout}",
                              _train(target, d / "e.safetensors", *extra), target))
    # configs bounded field by field, beside the real weights
    fields = [("text_cfg", "width"), ("text_cfg", "layers"), ("text_cfg", "heads"),
              ("text_cfg", "context_length"), ("text_cfg", "vocab_size"),
              ("vision_cfg", "width"), ("vision_cfg", "layers"), ("vision_cfg", "patch_size"),
              ("vision_cfg", "image_size")]
    values: list[object] = [10**6, 10**9, -1, 0, "abc", 1.5, None, True, [1, 2]]
    for part, key in fields:
        for value in values:
            d = work / f"cfg_{part}_{key}_{values.index(value)}"
            d.mkdir()
            weights = Path(shutil.copy(files["safetensors"], d / "w.safetensors"))
            cfg = {"model_cfg": json.loads(json.dumps(dict(TINY_CLIP_CFG, quick_gelu=True)))}
            cfg["model_cfg"][part][key] = value
            (d / "open_clip_config.json").write_text(json.dumps(cfg))
            cases.append(Case("absurd CLIP config", f"{part}.{key}={value!r}",
                              _train(weights, d / "e.safetensors"), d))
    for i, text in enumerate([b"{not json", b"[1, 2]", b"\xff\xfe\x00bad", b"[" * 100_000,
                              b'{"model_cfg": 7}', b""]):
        d = work / f"badcfg_{i}"
        d.mkdir()
        weights = Path(shutil.copy(files["safetensors"], d / "w.safetensors"))
        (d / "open_clip_config.json").write_bytes(text)
        cases.append(Case("broken CLIP config", f"{text[:12]!r}",
                          _train(weights, d / "e.safetensors"), d))
    from safetensors.torch import load_file, save_file

    import torch

    for layers in (24, 100, 1000):
        sd = load_file(str(files["safetensors"]))
        for i in range(layers):
            sd[f"transformer.resblocks.{i}.ln_1.weight"] = torch.ones(1)
        path = work / f"many_layers_{layers}.safetensors"
        save_file(sd, str(path))
        cases.append(Case("state dict declaring many layers", str(layers),
                          _train(path, work / f"ml{layers}.safetensors"), path))
    for bad in ("nan", "inf"):
        sd = load_file(str(files["safetensors"]))
        key = next(k for k in sd if sd[k].is_floating_point() and sd[k].numel() > 1)
        sd[key].view(-1)[0] = float(bad)
        path = work / f"clip_{bad}.safetensors"
        save_file(sd, str(path))
        shutil.copy(files["local_dir"] / "open_clip_config.json", work / "open_clip_config.json")
        cases.append(Case("non-finite CLIP weights", bad,
                          _train(path, work / f"nf_{bad}.safetensors"), path))
    return cases


def generator_cases(work: Path) -> list[Case]:
    from fabricate import nvlabs_network_dict, random_generator, write_nvlabs_pickle

    from coral_core.formats import save_generator

    G = random_generator()
    ok = work / "g_ok.safetensors"
    save_generator(G, ok, {})
    cases = [Case("valid generator (control)", "safetensors", ["info", str(ok)], ok, True)]
    for depth in (1_500, 20_000, 200_000):
        p = work / f"deep_{depth}.pkl"
        p.write_bytes(_deep_pickle(depth))
        cases.append(Case("deep pickle as generator", f"pkl {depth}", ["info", str(p)], p))
        z = _torch_zip(work / f"deep_{depth}.pt", _deep_pickle(depth))
        cases.append(Case("deep pickle as generator", f"zip {depth}", ["info", str(z)], z))
    for mib in (256, 1024):
        bomb = work / f"bomb_{mib}.pt"
        with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            with zf.open("archive/data.pkl", "w", force_zip64=True) as f:
                for _ in range(mib // 16):
                    f.write(b"\x00" * (1 << 24))
        cases.append(Case("zip bomb", f"{mib} MiB inflated", ["info", str(bomb)], bomb))
    changes: dict[str, Callable[[dict], None]] = {
        "img_resolution text": lambda st: st.update(img_resolution="abc"),
        "img_resolution 2^20": lambda st: st.update(img_resolution=2**20),
        "init_kwargs list": lambda st: st.update(_init_kwargs=[1, 2]),
        "z_dim NaN": lambda st: st.update(z_dim=math.nan),
        "z_dim huge": lambda st: st.update(z_dim=10**9),
        "w_dim negative": lambda st: st.update(w_dim=-512),
        "mapping_kwargs text": lambda st: st["_init_kwargs"].update(mapping_kwargs="x"),
        "synthesis_kwargs list": lambda st: st["_init_kwargs"].update(synthesis_kwargs=[1]),
        "channel_base huge": lambda st: st["_init_kwargs"]["synthesis_kwargs"].update(
            channel_base=10**12),
    }
    for name, change in changes.items():
        top = nvlabs_network_dict(G)
        change(top["G_ema"].state)
        p = write_nvlabs_pickle(G, work / f"nv_{name.replace(' ', '_')}.pkl", top=top)
        cases.append(Case("NVlabs record with bad fields", name, ["info", str(p)], p))
    # a small safetensors file whose header declares a huge tensor or nests deeply
    for name, header in {
        "deep header": b'{"__metadata__": {"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
        "huge shape": json.dumps({"w": {"dtype": "F32", "shape": [2**20, 2**20],
                                        "data_offsets": [0, 4]}}).encode(),
        "offsets past the end": json.dumps({"w": {"dtype": "F32", "shape": [4],
                                                  "data_offsets": [0, 10**12]}}).encode(),
        "header length lies": None,
    }.items():
        p = work / f"st_{name.replace(' ', '_')}.safetensors"
        if header is None:
            p.write_bytes(struct.pack("<Q", 10**15) + b"{}")
        else:
            p.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
        cases.append(Case("safetensors header", name, ["info", str(p)], p))
    import torch

    from coral_core.formats.integrity import HASH_KEY, read_safetensors, write_safetensors

    for bad in ("nan", "inf"):
        meta, tensors = read_safetensors(ok, "generator")
        key = next(k for k in tensors if tensors[k].is_floating_point() and tensors[k].numel() > 8)
        tensors[key].view(-1)[3] = float(bad)
        p = write_safetensors(work / f"g_{bad}.safetensors", tensors,
                              {k: v for k, v in meta.items() if k != HASH_KEY})
        cases.append(Case("non-finite generator weights", f"{bad} behind a valid hash",
                          ["info", str(p)], p))
        bad_G = random_generator()
        with torch.no_grad():
            next(iter(bad_G.parameters())).view(-1)[0] = float(bad)
        p2 = write_nvlabs_pickle(bad_G, work / f"nv_{bad}.pkl")
        cases.append(Case("non-finite generator weights", f"{bad} NVlabs", ["info", str(p2)],
                          p2))
    return cases


def edit_cases(work: Path) -> list[Case]:
    from coral_core.formats.integrity import read_safetensors, write_safetensors
    from coral_core.world.assets import DEMO_EDITS

    src = DEMO_EDITS / "orange_background.safetensors"
    meta, tensors = read_safetensors(src, "edit", require_hash=False)
    meta = {k: v for k, v in meta.items() if k != "content_sha256"}
    cases = [Case("valid edit (control)", "demo edit",
                  ["apply", "--edit", str(src), "--seeds", "0", "--out", str(work / "a_ok")],
                  src, True)]
    variants: dict[str, dict[str, str]] = {
        "info bad JSON": {"info": "{not json"},
        "info 100,000 deep": {"info": "[" * 100_000 + "]" * 100_000},
        "info a list": {"info": "[1, 2]"},
        "max_layer text": {"max_layer": '"abc"'},
        "max_layer -7": {"max_layer": "-7"},
        "max_layer 10^6": {"max_layer": "1000000"},
        "only_layers [-5, 100000]": {"only_layers": "[-5, 100000]"},
        "only_layers a table": {"only_layers": '{"a": 1}'},
        "only_layers empty": {"only_layers": "[]"},
        "catalogue_layer 10^9": {"catalogue_layer": "1000000000"},
        "catalogue_layer text": {"catalogue_layer": '"x"'},
        "catalogue_pieces -3": {"catalogue_pieces": "-3"},
        "catalogue_absorb 10^9": {"catalogue_absorb": "1000000000"},
        "segment_pool bad": {"segment_pool": "median"},
        "num_ws 10^9": {"num_ws": "1000000000"},
        "w_dim text": {"w_dim": "wide"},
        "resolution 0": {"resolution": "0"},
        "variant unknown": {"variant": "xyz"},
        "mode unknown": {"mode": "sometimes"},
        "format_version 99": {"format_version": "99"},
        "can_channels absurd": {"variant": "can", "can_channels": "[100000000]"},
    }
    for name, change in variants.items():
        p = work / f"edit_{len(cases)}.safetensors"
        write_safetensors(p, tensors, {**meta, **change})
        cases.append(Case("edit metadata", name, ["apply", "--edit", str(p), "--seeds", "0",
                                                  "--out", str(work / f"a_{len(cases)}")], p))
    tampered = work / "edit_tampered.safetensors"
    shutil.copy(src, tampered)
    data = bytearray(tampered.read_bytes())
    data[-5] ^= 0xFF
    tampered.write_bytes(bytes(data))
    cases.append(Case("edit metadata", "a flipped byte (content hash)",
                      ["apply", "--edit", str(tampered), "--seeds", "0", "--out",
                       str(work / "a_t")], tampered))
    return cases


def latent_cases(work: Path) -> list[Case]:
    import numpy as np

    from coral_core.world.assets import DEMO_EDITS

    edit = str(DEMO_EDITS / "orange_background.safetensors")
    cases = []
    arrays = {
        "compression bomb": ("savez_compressed", np.zeros((40_000, 18, 512), np.float32)),
        "complex": ("savez", np.ones((1, 10, 128), np.complex64)),
        "object dtype": ("savez", np.array([object()] * 3, dtype=object)),
        "NaN": ("savez", np.full((1, 10, 128), np.nan, np.float32)),
        "wrong shape": ("savez", np.ones((1, 3, 7), np.float32)),
        "int64": ("savez", np.ones((1, 10, 128), np.int64)),
        "huge batch": ("savez_compressed", np.zeros((100_000, 10, 128), np.float16)),
    }
    for name, (how, arr) in arrays.items():
        p = work / f"lat_{name.replace(' ', '_')}.npz"
        getattr(np, how)(p, w=arr)
        cases.append(Case("latents", name, ["apply", "--edit", edit, "--latent", str(p),
                                            "--transfer", "--out", str(work / f"l_{name}")], p,
                          expect_load=name == "int64"))  # whole numbers are real: they load
    p = _torch_zip(work / "lat_deep.pt", _deep_pickle(200_000))
    cases.append(Case("latents", "deep pickle .pt", ["apply", "--edit", edit, "--latent", str(p),
                                                     "--out", str(work / "l_deep")], p))
    return cases


def checkpoint_cases(work: Path) -> list[Case]:
    cases = []
    for depth in (1_500, 200_000):
        d = work / f"ckpt_{depth}"
        d.mkdir()
        out = d / "e.safetensors"
        _torch_zip(d / "e.ckpt.pt", _deep_pickle(depth))
        # the per-prompt resume checkpoint beside --out: set aside, never a blocker
        cases.append(Case("deep pickle as resume checkpoint", str(depth),
                          ["train", "--mode", "per-prompt", "--variant", "can", "--prompt",
                           "a red circle", "--steps", "2", "--prior-samples", "0", "--out",
                           str(out)], out, expect_load=True))
    return cases


def _kept_at(result: dict, kind: str) -> str | None:
    """The rescued result the error names must exist and load; nothing half-written may stay
    on the full disk."""
    import re

    from coral_core.formats.integrity import read_safetensors

    found = re.search(r"kept at (.+?): move it", result["stderr"])
    if not found:
        return "the error does not say where the result was kept"
    try:
        read_safetensors(Path(found.group(1)), kind, require_hash=False)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return f"the kept result does not load: {exc}"
    return _no_temp_left(result)


def _no_temp_left(result: dict) -> str | None:
    temps = [f for f in result.get("left", []) if f.endswith(".tmp")]
    return f"temp files left: {temps}" if temps else None


def lost_work_cases(work: Path) -> list[Case]:
    """Full disks, two writers of one output, a killed write, prompts that would fail late."""
    import numpy as np
    from PIL import Image

    from coral_core.world.assets import DEMO_EDITS, DEMO_GENERATOR

    photo = work / "photo.png"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(photo)
    edit = str(DEMO_EDITS / "orange_background.safetensors")
    train = ["train", "--prompt", "a red circle", "--seeds", "0", "--steps", "2",
             "--prior-samples", "0", "--out"]
    cases = []
    full: dict[str, tuple[list[str], str, Callable[[dict], str | None]]] = {
        "generate": (["generate", "--generator", str(DEMO_GENERATOR), "--seeds", "0-1",
                      "--out"], "gen", _no_temp_left),
        "convert": (["convert", str(DEMO_GENERATOR)], "g.safetensors", _no_temp_left),
        "apply": (["apply", "--edit", edit, "--seeds", "0", "--out"], "a", _no_temp_left),
        "train": (train, "e.safetensors", lambda r: _kept_at(r, "edit")),
        "invert": (["invert", "--image", str(photo), "--steps", "2", "--out"],
                   "lat.safetensors", lambda r: _kept_at(r, "latents")),
    }
    for name, (argv, target, verify) in full.items():
        disk = work / f"disk_{name}"
        out = disk / "out" / target
        cases.append(Case("full disk", name, [*argv, str(out)], out, disk=disk, verify=verify))
    two = work / "two" / "e.safetensors"
    cases.append(Case("two writers, one output", "coral train twice at once",
                      [*train, str(two)],
                      two, expect_load=True, twice=True, verify=lambda r: _both_kept(two, r)))
    killed = work / "killed" / "g.safetensors"
    cases.append(Case("killed write", "coral convert killed mid-write, then run again",
                      ["convert", str(_big_generator(work)), str(killed)], killed,
                      expect_load=True, prepare=lambda: _kill_mid_write(killed),
                      verify=lambda r: _swept(killed)))
    prompts = {"a lone surrogate": os.fsdecode(b"a red \xed\xa0\x80 circle"),
               "5,000 characters": "a red circle " * 385}
    for name, prompt in prompts.items():
        cases.append(Case("prompts that would fail late", name,
                          ["train", "--prompt", prompt, "--seeds", "0", "--steps", "50",
                           "--out", str(work / f"p_{len(cases)}.safetensors")], Path("prompt")))
    long_prompt = ["train", "--prompt", "a red circle beside a blue square " * 12, "--seeds",
                   "0", "--steps", "2", "--prior-samples", "0", "--out",
                   str(work / "p_long.safetensors")]
    cases.append(Case("prompts that would fail late", "beyond the CLIP's 77 tokens",
                      long_prompt, Path("prompt"), expect_load=True,
                      verify=lambda r: None if "phase=prompt warning=the CLIP reads" in r["stderr"]
                      else "the cut was not reported before training"))
    return cases


def _both_kept(target: Path, result: dict) -> str | None:
    from coral_core.formats.integrity import read_safetensors

    files = sorted(target.parent.glob("*.safetensors"))
    if len(files) != 2:
        return f"{len(files)} results for two trainings: {[f.name for f in files]}"
    for f in files:
        read_safetensors(f, "edit", require_hash=False)
    return None if "another job" in result["stderr"] else "no note names the second file"


def _big_generator(work: Path) -> Path:
    """A generator file big enough (about 100 MB) that a kill can land inside its write."""
    from fabricate import random_generator, tiny_config

    from coral_core.formats import save_generator

    path = work / "big_generator.safetensors"
    if not path.exists():
        save_generator(random_generator(tiny_config(channel_base=2**17, channel_max=512)),
                       path, {})
    return path


def _kill_mid_write(target: Path) -> None:
    """Start ``coral convert`` and SIGKILL it once its temp file has bytes in it, then age
    that leftover by two minutes (the time a user takes to run the command again)."""
    import signal

    src = _big_generator(target.parent.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-m", "coral_core", "convert", str(src),
                                 str(target)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            temps = [t for t in target.parent.glob(".*.tmp") if t.stat().st_size > 0]
            if temps:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                left = [t for t in temps if t.exists()]  # else the write ended first
                if left and not target.exists():
                    old = time.time() - 120
                    for t in left:
                        os.utime(t, (old, old))
                    return
                break
            time.sleep(0.001)
        for t in target.parent.glob(".*.tmp"):
            t.unlink()
        target.unlink(missing_ok=True)
    raise RuntimeError("could not catch coral convert inside its write in 20 tries")


def _swept(target: Path) -> str | None:
    from coral_core.formats import load_generator

    left = [t.name for t in target.parent.glob(".*.tmp")]
    if left:
        return f"the killed write's temp file is still there: {left}"
    load_generator(target)
    return None


def _command(case: Case) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", WRAPPER, *case.argv]
    if case.disk is not None:
        case.disk.mkdir(parents=True, exist_ok=True)
        rescue = case.disk.parent / f"{case.disk.name}_rescue"
        rescue.mkdir(exist_ok=True)
        env.update(TMPDIR=str(rescue), CORAL_RECOUNT_LIST=str(case.disk))
        cmd = ["unshare", "--mount", "--map-root-user", "--", "sh", "-c", FULL_DISK,
               str(case.disk), *cmd]
    return cmd, env


def _classify(case: Case, returncode: int, err: str) -> str:
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    if returncode < 0:
        return f"crash (signal {-returncode})"
    if "Traceback (most recent call last)" in err:
        return "traceback"
    if returncode == 0:
        return "loaded"
    if returncode == 97 and case.disk is not None:
        return "no full disk here (mount refused)"
    if returncode == 2 and errors and (str(case.file) in errors[-1]
                                       or case.file.name in errors[-1]):
        return "named error"
    return "error without the file" if returncode == 2 and errors else f"exit {returncode}"


def run_case(case: Case) -> dict[str, object]:
    def cap() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    if case.prepare is not None:
        case.prepare()
    cmd, env = _command(case)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT, preexec_fn=cap)
             for _ in range(2 if case.twice else 1)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1.0, TIMEOUT - time.perf_counter()
                                                        + t0))[1])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        return {"outcome": "hang", "seconds": TIMEOUT, "rss_kb": 0, "message": ""}
    outcomes = [_classify(case, proc.returncode, err) for proc, err in zip(procs, outputs)]
    err = "\n".join(outputs)
    rss = max((int(e.rsplit("RSS_KB", 1)[1].split()[0]) for e in outputs if "RSS_KB" in e),
              default=0)
    left = [json.loads(ln[5:]) for ln in err.splitlines() if ln.startswith("LEFT ")]
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("RSS_KB",
                                                                                 "LEFT "))]
    errors = [ln for ln in lines if ": error: " in ln]
    expected = "loaded" if case.expect_load else "named error"
    # two writers: the run counts as expected only if both processes are
    outcome = next((o for o in outcomes if o != expected), expected)
    message = (errors[-1] if errors else (lines[-1] if lines else ""))[:300]
    if outcome == expected and case.verify is not None:
        problem = case.verify({"stderr": err, "left": left[0] if left else []})
        if problem:
            outcome, message = "lost work", problem[:300]
    return {"outcome": outcome, "seconds": round(time.perf_counter() - t0, 1), "rss_kb": rss,
            "message": message}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/hostile_recount")
    parser.add_argument("--only", default=None, help="run only classes containing this text")
    parser.add_argument("--list", action="store_true", help="build the corpus, list, stop")
    parser.add_argument("--server", action="store_true",
                        help="also hand every input a node can read to a real ComfyUI server")
    parser.add_argument("--server-only", action="store_true",
                        help="only the server half (the CLI half takes about 20 minutes)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hostile_"))
    try:
        cases = [c for build in (clip_cases, generator_cases, edit_cases, latent_cases,
                                 checkpoint_cases, lost_work_cases) for c in build(work)]
        if args.only:
            cases = [c for c in cases if args.only in c.cls]
        if args.list:
            for c in cases:
                print(f"{c.cls} / {c.name}: coral {' '.join(c.argv)[:120]}")
            print(f"{len(cases)} inputs")
            return 0
        if args.server_only:
            from hostile_server import run_cases

            rows = run_cases(cases, work, MEMORY_CAP)
            _report(rows, out, "server")
            return 0 if all(r["ok"] for r in rows) else 1
        baseline = run_case(Case("baseline", "coral --help", ["info", "--help"], work))
        base_kb = int(baseline["rss_kb"])
        rows: list[dict] = []
        for i, case in enumerate(cases, 1):
            result = run_case(case)
            ok = result["outcome"] == ("loaded" if case.expect_load else "named error")
            rows.append({"class": case.cls, "input": case.name, "ok": ok, **result,
                         "rss_above_baseline_mib": round((int(result["rss_kb"]) - base_kb)
                                                         / 1024)})
            print(f"[{i}/{len(cases)}] {case.cls} / {case.name}: {result['outcome']} "
                  f"({result['seconds']} s, +{rows[-1]['rss_above_baseline_mib']} MiB)"
                  + ("" if ok else f"  <-- {result['message']}"), flush=True)
        _report(rows, out)
        if args.server:
            from hostile_server import run_cases

            server_rows = run_cases(cases, work, MEMORY_CAP)
            _report(server_rows, out, "server")
            rows += server_rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["ok"] for r in rows) else 1


def _report(rows: list[dict], out: Path, name: str = "recount") -> None:
    """Per class: inputs and how they ended; for the server also whether it served the next
    prompt after each. Raw exceptions in ComfyUI's error panel count as tracebacks."""
    server = name == "server"
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_class[r["class"]].append(r)
    lines = ["| class | inputs | named errors | correct loads | tracebacks | crashes | hangs "
             "| other |" + (" next prompt served |" if server else "")
             + " peak RSS above baseline (MiB, max) |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if server else "")]
    for cls, rs in by_class.items():
        count: dict[str, int] = defaultdict(int)
        for r in rs:
            kind = r["outcome"]
            kind = "traceback" if kind.startswith("raw ") else \
                "crash" if kind.startswith("crash") else kind
            count[kind] += 1
        other = len(rs) - sum(count[k] for k in ("named error", "loaded", "traceback", "crash",
                                                 "hang"))
        lines.append(f"| {cls} | {len(rs)} | {count['named error']} | {count['loaded']} | "
                     f"{count['traceback']} | {count['crash']} | {count['hang']} | {other} | "
                     + (f"{sum(r['serves_next_prompt'] for r in rs)}/{len(rs)} | "
                        if server else "")
                     + f"{max(r['rss_above_baseline_mib'] for r in rs)} |")
    total_ok = sum(r["ok"] for r in rows)
    lines.append(f"\n{total_ok} of {len(rows)} inputs ended as expected (a named error, or a "
                 "correct load for the controls" + (", and the next prompt served)."
                                                    if server else ")."))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
