"""The ``coral`` command line (also ``python -m coral_core``).

Each sub-command is a thin wrapper over engine functions; errors the user can fix print one
clear line and exit with status 2 instead of a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from .atomic import ensure_writable
from .errors import CoralError

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn
    return register


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from .formats import describe, load_generator

    info = describe(load_generator(args.file))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>15}: {value}")
    return 0


@command("convert")
def cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from .atomic import atomic_path
    from .formats import load_generator, nvlabs_to_rosinality, save_generator

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


@command("generate")
def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from .cache import get_generator
    from .images import save_tensor_images
    from .seeds import parse_seeds

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coral", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="describe a generator file")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("convert", help="convert a generator to .safetensors or rosinality .pt")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--to", choices=["safetensors", "rosinality"])

    s = sub.add_parser("generate", help="images from seeds, as NVIDIA's generate.py")
    s.add_argument("--generator", required=True)
    s.add_argument("--seeds", default="0-7")
    s.add_argument("--truncation", type=float, default=1.0)
    s.add_argument("--truncation-cutoff", type=int, default=None)
    s.add_argument("--noise", choices=["const", "random", "none"], default="const")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--device", default=None)
    s.add_argument("--out", required=True)

    for register in _EXTRA_PARSERS:
        register(sub)
    return p


_EXTRA_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "queue":  # queue is an HTTP client: it never imports torch
        _load_command_modules()
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except CoralError as exc:
        print(f"coral {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output folder, disk full, missing file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"coral {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


def _load_command_modules() -> None:
    """Sub-commands of later subsystems register themselves on import."""
    import importlib

    for name in ("coral_core.commands.edit", "coral_core.commands.world"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and not name.startswith(exc.name):
                raise


def add_parser(fn: Callable[[argparse._SubParsersAction], None]) -> None:
    _EXTRA_PARSERS.append(fn)


@command("queue")
def cmd_queue(args: argparse.Namespace) -> int:
    from .comfy_client import queue_across_servers, queue_workflows
    from .seeds import parse_seeds

    try:
        workflow = json.loads(Path(args.workflow).read_text())
    except (OSError, ValueError) as exc:
        raise CoralError(f"{args.workflow}: not a readable API-format workflow ({exc})") from exc
    if not isinstance(workflow, dict) or "nodes" in workflow:
        raise CoralError(f"{args.workflow}: this is a UI-format workflow; export it with "
                         "'Save (API)' or use the copy under workflows/api/")
    seeds = parse_seeds(args.seeds) if args.seeds else None
    servers = args.server or ["http://127.0.0.1:8188"]
    out = Path(args.out) if args.out else None
    if len(servers) == 1:
        results = queue_workflows(servers[0], workflow, args.set or [], seeds, out,
                                  args.timeout)
    else:
        results = queue_across_servers(servers, workflow, args.set or [], seeds, out,
                                       args.timeout, args.in_flight)
    failed = [r for r in results if r.status != "success"]
    for r in results:
        extra = f" ({len(r.files)} files)" if r.files else ""
        print(f"{r.label}: {r.status}{extra}" + (f": {r.error[:300]}" if r.error else ""))
    print(f"{len(results) - len(failed)} of {len(results)} prompts succeeded")
    return 1 if failed else 0


def _register_queue(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("queue", help="queue an API workflow on a ComfyUI server, many times")
    s.add_argument("--server", action="append", default=None,
                   help="ComfyUI URL (default http://127.0.0.1:8188); repeat to spread the "
                        "batch over several servers, with failover")
    s.add_argument("--in-flight", type=int, default=2,
                   help="several servers: prompts queued on each at a time")
    s.add_argument("--workflow", required=True, help="API-format workflow JSON")
    s.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                   help="override an input (NODE = id or class_type); repeatable")
    s.add_argument("--seeds", default=None, help="one prompt per seed, e.g. 0-99")
    s.add_argument("--out", default=None, help="download output images here")
    s.add_argument("--timeout", type=float, default=3600)


add_parser(_register_queue)


@command("invert")
def cmd_invert(args: argparse.Namespace) -> int:
    import torch

    from .cache import get_clip, get_generator
    from .formats import save_generator
    from .images import load_photo, save_tensor_images
    from .inversion import InvertConfig, invert, prepare_images
    from .latents import save_latents
    from .progress import Reporter, print_progress
    from .world.assets import DEMO_GENERATOR, require

    ensure_writable(args.out)
    photos = [load_photo(p) for p in args.image]
    G = get_generator(args.generator or require(DEMO_GENERATOR), args.device).generator
    target = torch.cat([prepare_images(p, G.img_resolution) for p in photos])
    clip = get_clip(args.clip, None, args.device) if args.clip else None
    init = None
    if args.e4e:
        from .inversion.e4e import load_e4e

        init = load_e4e(args.e4e).encode(target)
    res = invert(G, target, InvertConfig(space=args.space, steps=args.steps,
                                         pti_steps=args.pti), clip=clip,
                 vgg16_path=args.vgg16, init_ws=init,
                 reporter=Reporter(print_progress("invert"), every=25))
    out = Path(args.out)
    meta = {"generator_fingerprint": (res.generator or G).fingerprint(), "space": args.space}
    save_latents(res.ws, out, meta)
    save_tensor_images(res.reconstruction, [out.with_name(f"{out.stem}_rec{i}.png")
                                            for i in range(len(photos))])
    if res.generator is not None:
        save_generator(res.generator, out.with_name(out.stem + "_pti.safetensors"))
    print(json.dumps({"psnr": res.psnr, "ssim": res.ssim, "seconds": round(res.seconds, 2),
                      "perceptual": res.perceptual}, indent=2))
    return 0


def _register_invert(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("invert", help="project photos into W / W+ (optionally PTI)")
    s.add_argument("--generator", default=None)
    s.add_argument("--image", action="append", required=True, help="repeat for a batch")
    s.add_argument("--space", choices=["w", "w+", "w_then_w+"], default="w+")
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--pti", type=int, default=0, metavar="STEPS", help="pivotal tuning steps")
    s.add_argument("--clip", default=None, help="CLIP for perceptual features")
    s.add_argument("--vgg16", default=None, help="refused: TorchScript LPIPS files run code when loaded (the CLIP-feature term is used)")
    s.add_argument("--e4e", default=None, help="e4e_ffhq_encode.pt: start from its W+ codes")
    s.add_argument("--device", default=None)
    s.add_argument("--out", required=True, help="LATENT.safetensors")


add_parser(_register_invert)
