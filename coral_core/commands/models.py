"""``coral info``, ``coral convert`` and ``coral generate``: a generator file on its own."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..atomic import ensure_writable


def cmd_info(args: argparse.Namespace) -> int:
    from ..formats import describe, load_generator

    info = describe(load_generator(args.file))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>15}: {value}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from ..atomic import atomic_path
    from ..formats import load_generator, nvlabs_to_rosinality, save_generator

    loaded = load_generator(args.src)
    dst = Path(args.dst)
    to = args.to or ("rosinality" if dst.suffix in (".pt", ".pth") else "safetensors")
    if to == "safetensors":
        save_generator(loaded.generator, dst, {"converted_from": loaded.format})
    else:
        with atomic_path(dst) as tmp:
            torch.save(nvlabs_to_rosinality(loaded.generator), tmp)
    print(f"wrote {dst} ({to}) from {args.src} ({loaded.format})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from ..cache import get_generator
    from ..images import save_tensor_images
    from ..seeds import parse_seeds

    seeds = parse_seeds(args.seeds)
    out = ensure_writable(args.out, is_folder=True)
    loaded = get_generator(args.generator, args.device)
    G = loaded.generator
    t0 = time.perf_counter()
    for i in range(0, len(seeds), args.batch):
        chunk = seeds[i:i + args.batch]
        with torch.no_grad():
            z = G.z_from_seeds(chunk)
            ws = G.mapping_ws(z, args.truncation, args.truncation_cutoff)
            img = G.synthesize(ws, noise_mode=args.noise)
        save_tensor_images(img, [out / f"seed{s:04d}.png" for s in chunk])
    print(f"wrote {len(seeds)} images to {out} in {time.perf_counter() - t0:.2f}s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-command(s) to the ``coral`` parser."""
    s = sub.add_parser("info", help="describe a generator file")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=cmd_info)

    s = sub.add_parser("convert", help="convert a generator to .safetensors or rosinality .pt")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--to", choices=["safetensors", "rosinality"])
    s.set_defaults(run=cmd_convert)

    s = sub.add_parser("generate", help="images from seeds, as NVIDIA's generate.py")
    s.add_argument("--generator", required=True)
    s.add_argument("--seeds", default="0-7")
    s.add_argument("--truncation", type=float, default=1.0)
    s.add_argument("--truncation-cutoff", type=int, default=None)
    s.add_argument("--noise", choices=["const", "random", "none"], default="const")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--device", default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(run=cmd_generate)
