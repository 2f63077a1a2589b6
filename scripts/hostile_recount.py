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
import resource, sys
from coral_core.cli import main
try:
    code = main(sys.argv[1:])
finally:
    sys.stderr.write("\\nRSS_KB %d\\n" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


@dataclass
class Case:
    cls: str          # the class
    name: str         # this input
    argv: list[str]   # the coral command that reads it
    file: Path        # the file the error must name
    expect_load: bool = False  # a valid file beside the hostile ones: it must load


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
        "complex": ("savez", np.ones((1, 10, 64), np.complex64)),
        "object dtype": ("savez", np.array([object()] * 3, dtype=object)),
        "NaN": ("savez", np.full((1, 10, 64), np.nan, np.float32)),
        "wrong shape": ("savez", np.ones((1, 3, 7), np.float32)),
        "int64": ("savez", np.ones((1, 10, 64), np.int64)),
        "huge batch": ("savez_compressed", np.zeros((100_000, 10, 64), np.float16)),
    }
    for name, (how, arr) in arrays.items():
        p = work / f"lat_{name.replace(' ', '_')}.npz"
        getattr(np, how)(p, w=arr)
        cases.append(Case("latents", name, ["apply", "--edit", edit, "--latent", str(p),
                                            "--transfer", "--out", str(work / f"l_{name}")], p))
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


def run_case(case: Case) -> dict[str, object]:
    def cap() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", WRAPPER, *case.argv], capture_output=True,
                              text=True, timeout=TIMEOUT, env=env, cwd=ROOT, preexec_fn=cap)
    except subprocess.TimeoutExpired:
        return {"outcome": "hang", "seconds": TIMEOUT, "rss_kb": 0, "message": ""}
    err = proc.stderr
    rss = int(err.rsplit("RSS_KB", 1)[1].split()[0]) if "RSS_KB" in err else 0
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("RSS_KB")]
    errors = [ln for ln in lines if ": error: " in ln]
    if proc.returncode < 0:
        outcome = f"crash (signal {-proc.returncode})"
    elif "Traceback (most recent call last)" in err:
        outcome = "traceback"
    elif proc.returncode == 0:
        outcome = "loaded"
    elif proc.returncode == 2 and errors and (str(case.file) in errors[-1]
                                              or case.file.name in errors[-1]):
        outcome = "named error"
    elif proc.returncode == 2 and errors:
        outcome = "error without the file"
    else:
        outcome = f"exit {proc.returncode}"
    return {"outcome": outcome, "seconds": round(time.perf_counter() - t0, 1), "rss_kb": rss,
            "message": (errors[-1] if errors else (lines[-1] if lines else ""))[:300]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/hostile_recount")
    parser.add_argument("--only", default=None, help="run only classes containing this text")
    parser.add_argument("--list", action="store_true", help="build the corpus, list, stop")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hostile_"))
    try:
        cases = [c for build in (clip_cases, generator_cases, edit_cases, latent_cases,
                                 checkpoint_cases) for c in build(work)]
        if args.only:
            cases = [c for c in cases if args.only in c.cls]
        if args.list:
            for c in cases:
                print(f"{c.cls} / {c.name}: coral {' '.join(c.argv)[:120]}")
            print(f"{len(cases)} inputs")
            return 0
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["ok"] for r in rows) else 1


def _report(rows: list[dict], out: Path) -> None:
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_class[r["class"]].append(r)
    lines = ["| class | inputs | named errors | correct loads | tracebacks | crashes | hangs "
             "| other | peak RSS above baseline (MiB, max) |", "|---|---|---|---|---|---|---|---|---|"]
    for cls, rs in by_class.items():
        count = defaultdict(int)
        for r in rs:
            count[r["outcome"]] += 1
        other = len(rs) - sum(count[k] for k in ("named error", "loaded", "traceback", "hang")) \
            - sum(v for k, v in count.items() if k.startswith("crash"))
        lines.append(f"| {cls} | {len(rs)} | {count['named error']} | {count['loaded']} | "
                     f"{count['traceback']} | {sum(v for k, v in count.items() if k.startswith('crash'))} "
                     f"| {count['hang']} | {other} | "
                     f"{max(r['rss_above_baseline_mib'] for r in rs)} |")
    total_ok = sum(r["ok"] for r in rows)
    lines.append(f"\n{total_ok} of {len(rows)} inputs ended as expected (a named error, or a "
                 "correct load for the controls).")
    (out / "recount.md").write_text("\n".join(lines) + "\n")
    (out / "recount.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
