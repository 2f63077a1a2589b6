"""``coral world ...`` (demo-world training and checks) and ``coral demo``."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..errors import InputError


def cmd_world(args: argparse.Namespace) -> int:
    from ..progress import Reporter, print_progress
    from ..world import assets

    rep = Reporter(print_progress(args.action), every=50)
    t0 = time.perf_counter()
    if args.action == "train-clip":
        from ..world.clip_train import train_clip

        out = Path(args.out or assets.world_assets(args.world).clip)
        result = train_clip(out, steps=args.steps or 6000, seed=args.seed, reporter=rep,
                            device=args.device, max_minutes=args.max_minutes,
                            stop_at=args.stop_at,
                            init_from=Path(args.init_from) if args.init_from else None,
                            blends=args.blend_twins, world=args.world,
                            focus=tuple(a for a in (args.focus or "").split(",") if a),
                            **{k: v for k, v in (("batch", args.batch), ("lr", args.lr))
                               if v is not None})  # unset: the trainer's own defaults
    elif args.action == "train-gan":
        from ..world.gan_train import train_gan

        out = Path(args.out or assets.world_assets(args.world).generator)
        result = train_gan(out, steps=args.steps or 20000, seed=args.seed, reporter=rep,
                           device=args.device, max_minutes=args.max_minutes,
                           stop_at=args.stop_at, world=args.world,
                           part_weight=args.part_weight,
                           init_from=Path(args.init_from) if args.init_from else None,
                           **({"lr": args.lr} if args.lr is not None else {}))
    elif args.action == "train-judge":
        out = Path(args.out or assets.world_assets(args.world).judge)
        if args.world == "faces":
            from ..world.faces.judge import train_face_judge

            result = train_face_judge(out, steps=args.steps or 1200, seed=args.seed + 1,
                                      reporter=rep, device=args.device)
        else:
            from ..world.judge import train_judge

            result = train_judge(out, steps=args.steps or 800, seed=args.seed + 1,
                                 reporter=rep, device=args.device)
    elif args.action == "export-rosinality":
        from ..atomic import atomic_path
        from ..formats import load_generator, nvlabs_to_rosinality

        G = load_generator(assets.require(assets.DEMO_GENERATOR)).generator
        out = Path(args.out or "out/generator_rosinality.pt")
        with atomic_path(out) as tmp:
            import torch

            torch.save(nvlabs_to_rosinality(G), tmp)
        result = {"wrote": str(out)}
    elif args.action == "check":
        from ..cache import get_clip
        from ..formats import load_generator
        from ..world.check import check_world, format_check
        from ..world.judge import load_judge

        where = assets.world_assets(args.world)
        G = load_generator(args.generator or assets.require(where.generator)).generator
        clip = get_clip(args.clip or assets.require(where.clip))
        judge_path = Path(args.judge) if args.judge else assets.require(where.judge)
        if args.world == "faces":
            from ..world.faces.check import check_faces
            from ..world.faces.judge import load_face_judge

            result = check_faces(G.to(args.device), load_face_judge(judge_path), clip,
                                 n=args.samples)
        else:
            result = check_world(G.to(args.device), load_judge(judge_path), clip,
                                 n=args.samples)
        print(format_check(result))
    else:  # render
        from ..images import save_tensor_images
        from ..seeds import parse_seeds
        from ..world.captions import full_caption
        from ..world.render import render
        from ..world.scene import random_scenes

        out = Path(args.out or "out/renders")
        seeds = parse_seeds(args.seeds)
        scenes = random_scenes(len(seeds), args.seed)
        img, masks = render(scenes)
        save_tensor_images(img, [out / f"scene{s:04d}.png" for s in seeds])
        from ..images import save_png

        for s, m in zip(seeds, masks):
            for k, layer in enumerate(m):
                save_png((layer.numpy() * 255).astype("uint8"), out / f"scene{s:04d}_mask{k}.png")
        result = {"captions": {f"scene{s:04d}": full_caption(scenes, i)
                               for i, s in enumerate(seeds)}}
    result = dict(result) if isinstance(result, dict) else {"result": result}
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..world import assets
    from ..world.demo import run_demo
    from .edit import cli_generator

    # loaded here for the thread policy; run_demo then finds it resident (same file, device)
    cli_generator(assets.require(assets.world_assets(args.world).generator))

    report = run_demo(Path(args.out), prompt=args.prompt, seeds=args.seeds, steps=args.steps,
                      world=args.world, preset=args.preset)
    print(report["summary_text"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``world``, ``demo`` and ``eval`` to the ``coral`` parser."""
    from ..world import assets  # paths and names only: no torch at start-up

    _register_eval(sub)
    s = sub.add_parser("world", help="demo world: train / export / check / render")
    s.set_defaults(run=cmd_world)
    s.add_argument("action", choices=["train-clip", "train-gan", "train-judge",
                                      "export-rosinality", "check", "render"])
    s.add_argument("--world", default="shapes", choices=assets.WORLDS,
                   help="which demo world (default shapes)")
    s.add_argument("--out", default=None, help="output path (default: the shipped asset)")
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--seeds", default="0-7", help="render: which scenes")
    s.add_argument("--device", default="cpu", help="training device, e.g. cuda")
    s.add_argument("--max-minutes", type=float, default=None,
                   help="stop training early after this long (a checkpoint is kept)")
    s.add_argument("--stop-at", type=int, default=None,
                   help="train: stop after this step of a --steps schedule (reproduces a run "
                        "that a time budget cut short)")
    s.add_argument("--batch", type=int, default=None, help="train-clip: scenes per step "
                   "(each with its twin; default 128)")
    s.add_argument("--lr", type=float, default=None, help="train-clip / train-gan: peak "
                   "learning rate (default 1e-3 / 2e-3)")
    s.add_argument("--from", dest="init_from", default=None,
                   help="train-clip: continue from this CLIP folder; train-gan: start from "
                        "this generator file (fine-tuning)")
    s.add_argument("--blend-twins", action="store_true",
                   help="train-clip: add a part-way-colour negative of every scene")
    s.add_argument("--focus", default=None,
                   help="train-clip --world faces: attributes half the twins and captions "
                        "stress, e.g. mouth,eyes (a fine-tune with --from)")
    s.add_argument("--part-weight", type=float, default=0.0,
                   help="train-gan: weight each pixel's loss by its part's rarity (0: plain)")
    s.add_argument("--generator", default=None, help="check: generator to check")
    s.add_argument("--clip", default=None, help="check: CLIP to check")
    s.add_argument("--judge", default=None, help="check: judge to read samples with")
    s.add_argument("--samples", type=int, default=500, help="check: samples to score")

    s = sub.add_parser("demo", help="the main job: a CORAL edit on the demo models")
    s.set_defaults(run=cmd_demo)
    s.add_argument("--world", default=assets.DEMO_WORLD, choices=assets.WORLDS,
                   help=f"which demo world's models (default {assets.DEMO_WORLD}; prompts: "
                        + ", ".join(f"{w} {p!r}" for w, p in assets.DEMO_PROMPTS.items())
                        + ", unless --prompt says otherwise)")
    s.add_argument("--out", default="out/demo")
    s.add_argument("--prompt", default=None)
    s.add_argument("--seeds", default="0-3")
    s.add_argument("--steps", type=int, default=None, help="default: the library's")
    s.add_argument("--preset", default="coral", choices=["coral", "paper"],
                   help="coral (the defaults) or paper (the published method, no departure)")



def cmd_eval(args: argparse.Namespace) -> int:
    from ..cache import get_clip
    from ..seeds import parse_seeds
    from ..world import assets
    from ..world.evaluate import BOUNDS, KINDS, METHODS, format_table, run_eval
    from ..world.judge import load_judge
    from .edit import cli_generator

    settings = eval_settings(args.set or [])
    where = assets.world_assets(args.world)
    G = cli_generator(args.generator or assets.require(where.generator))
    clip = get_clip(args.clip or assets.require(where.clip))
    if args.world == "faces":
        from ..world.faces.evaluate import KINDS as FACE_KINDS
        from ..world.faces.evaluate import format_table as face_table
        from ..world.faces.evaluate import run_face_eval
        from ..world.faces.judge import load_face_judge

        face_kinds = tuple(args.kinds.split(",")) if args.kinds else tuple(FACE_KINDS)
        if set(face_kinds) - set(FACE_KINDS):
            raise InputError(f"--kinds: unknown {sorted(set(face_kinds) - set(FACE_KINDS))}; "
                             f"choose from {', '.join(FACE_KINDS)}")
        face_result = run_face_eval(
            G, clip, load_face_judge(assets.require(where.judge)), parse_seeds(args.seeds),
            tuple(args.methods.split(",")) if args.methods else ("styleclip", "coral_ss"),
            face_kinds, args.steps, args.can_steps, Path(args.out), preset=args.preset,
            train_overrides=settings)
        print(face_table(face_result["summary"]))
        print(f"wrote {args.out}/eval.json, eval_table.md, eval_grid.png")
        return 0
    judge = load_judge(assets.require(where.judge))
    kinds = tuple(args.kinds.split(",")) if args.kinds else KINDS
    if set(kinds) - set(KINDS):
        raise InputError(f"--kinds: unknown {sorted(set(kinds) - set(KINDS))}; choose from "
                         f"{', '.join(KINDS)}")
    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    unknown = set(methods) - set(METHODS) - set(BOUNDS)
    if unknown:
        raise InputError(f"--methods: unknown {sorted(unknown)}; choose from "
                         f"{', '.join(METHODS + BOUNDS)}")
    result = run_eval(G, clip, judge, parse_seeds(args.seeds), args.steps, methods,
                      kinds, Path(args.out), can_steps=args.can_steps, preset=args.preset,
                      train_overrides=settings)
    print(format_table(result["summary"]))
    print(f"wrote {args.out}/eval.json, eval_table.md, eval_grid.png")
    return 0


# What the evaluation sets per case itself (the case's prompt and seed, the method's form and
# batch; the step budgets have their own options): --set may not change them.
_EVAL_OWNS = ("prompt", "steps", "variant", "mode", "batch", "seed", "no_masks", "direction",
              "truncation")


def eval_settings(items: list[str]) -> dict[str, Any]:
    """``coral eval --set FIELD=VALUE`` items -> training settings for every method's config."""
    from ..editing.presets import parse_settings

    settings = parse_settings(items)
    owned = sorted(set(settings) & set(_EVAL_OWNS))
    if owned:
        raise InputError(f"--set cannot change {', '.join(owned)}: the evaluation sets it per "
                         "case (use --steps / --can-steps for the step budgets)")
    return settings


def _register_eval(sub: argparse._SubParsersAction) -> None:
    from ..world import assets  # paths and names only: no torch at start-up

    s = sub.add_parser("eval", help="scored edit benchmark on a demo world (4 methods)")
    s.set_defaults(run=cmd_eval)
    s.add_argument("--world", default="shapes", choices=assets.WORLDS)
    s.add_argument("--generator", default=None)
    s.add_argument("--clip", default=None)
    s.add_argument("--seeds", default="0-7", help="scenes")
    s.add_argument("--preset", default="coral", choices=["coral", "paper"],
                   help="the CORAL methods' settings: coral (the defaults) or paper (the "
                        "published method, no departure)")
    s.add_argument("--steps", type=int, default=None, help="default: the library's")
    s.add_argument("--can-steps", type=int, default=None, help="per-prompt CAN training steps")
    s.add_argument("--methods", default=None, help="comma list of styleclip, feat, coral_ss, "
                   "coral_can (the default set) and true_region (CORAL-SS given the true "
                   "region: the bound a perfect region choice reaches)")
    s.add_argument("--kinds", default=None, help="comma list of edit kinds: " +
                   ", ".join(["background", "object colour", "shape", "two attributes",
                              "absent", "already", "unknown"]) + " (default all)")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="change one training setting of every method's config (an ablation), "
                        "e.g. num_segments=12 or weights.area=0.05; repeatable")
    s.add_argument("--out", default="out/eval")

