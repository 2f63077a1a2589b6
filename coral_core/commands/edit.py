"""``coral train``, ``coral apply``, ``coral masks`` and ``coral bench``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import ensure_writable, file_stamp, save_keeping_result
from ..editing.config import AREA_WEIGHTINGS, PRIOR_FORMS
from ..editing.presets import DEFAULT_PRESET, PRESETS, preset_config, preset_defaults

if TYPE_CHECKING:
    import torch

# --recompute auto|on|off -> TrainConfig.recompute
MEMORY_OPTION_CHOICES = {"auto": None, "on": True, "off": False}

# The engine's defaults, read once: the CLI keeps no numbers of its own.
_TRAIN = preset_defaults()
_WEIGHTS = _TRAIN.weights



def cli_generator(path: str | Path, device: str | None = None) -> Any:
    """A generator for a ``coral`` command: resident (cache.py), with the CLI's thread policy
    applied for its size (devices.cli_threads_for; the nodes never call this)."""
    from ..cache import get_generator
    from ..devices import cli_threads_for

    G = get_generator(path, device).generator
    cli_threads_for(G.img_resolution, G.w_avg.device)
    return G


def _generator(args: argparse.Namespace) -> Any:
    from ..world.assets import DEMO_GENERATOR, require

    return cli_generator(args.generator or require(DEMO_GENERATOR), args.device)


def _clip(args: argparse.Namespace) -> Any:
    from ..cache import get_clip
    from ..world.assets import DEMO_CLIP, require

    return get_clip(args.clip or require(DEMO_CLIP), args.clip_model, args.device)


def _latents(args: argparse.Namespace, G: Any, default_seeds: str) -> tuple[torch.Tensor,
                                                                             list[str]]:
    from ..latents import load_latents
    from ..seeds import parse_seeds

    if getattr(args, "latent", None):
        ws = load_latents(args.latent, G.num_ws, G.w_dim).to(G.w_avg.device)
        return ws, [f"latent{i:02d}" for i in range(ws.shape[0])]
    seeds = parse_seeds(getattr(args, "seeds", None) or default_seeds)
    import torch

    with torch.no_grad():
        ws = G.mapping_ws(G.z_from_seeds(seeds).to(G.w_avg.device), args.truncation)
    return ws, [f"seed{s:04d}" for s in seeds]


def _common(s: argparse.ArgumentParser, clip: bool = False) -> None:
    s.add_argument("--generator", help="generator file (default: the shipped demo model)")
    if clip:
        s.add_argument("--clip", help="CLIP file or folder (default: the shipped demo CLIP)")
        s.add_argument("--clip-model", help="open_clip model name for bare state dicts")
    s.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    s.add_argument("--truncation", type=float, default=_TRAIN.truncation)


def cmd_train(args: argparse.Namespace) -> int:
    from ..progress import Reporter, print_progress
    from ..editing.memory import describe_memory_options
    from ..editing.trainer import train_edit

    ensure_writable(args.out)
    stamp = file_stamp(args.out)
    G, clip = _generator(args), _clip(args)
    mode = args.mode.replace("-", "_")
    latents = None
    if mode == "per_image":
        latents, _ = _latents(args, G, str(args.seed))
    # options left unset (None) take the preset's value
    weights = {k: v for k, v in (("area", args.area), ("tv", args.tv), ("l2", args.l2),
                                 ("identity", args.identity),
                                 ("area_weighting", args.area_weighting),
                                 ("clip_on_edit", args.clip_on_edit),
                                 ("even_change", args.even_change)) if v is not None}
    chosen = {k: v for k, v in (("num_segments", args.segments),
                                ("prune_tolerance", args.prune_tolerance),
                                ("prune_at", args.prune_at),
                                ("contest_steps", args.contest_steps),
                                ("prune_batches", args.prune_batches),
                                ("prune_image_keep", args.prune_image_keep),
                                ("fit_scenes_only", args.fit_scenes_only),
                                ("prior_samples", args.prior_samples),
                                ("prior_form", args.prior_form),
                                ("check_absent", args.absent_check),
                                ("split_clauses", args.split_clauses),
                                ("along_prior", args.hold_to_prior)) if v is not None}
    cfg = preset_config(args.preset, prompt=args.prompt, neutral=args.neutral or "",
                        variant=args.variant, direction=args.direction, mode=mode,
                        steps=args.steps, lr=args.lr, batch=args.batch, seed=args.seed,
                        truncation=args.truncation, max_layer=args.max_layer,
                        directional=args.directional, weights=weights,
                        bf16=MEMORY_OPTION_CHOICES[args.bf16],
                        recompute=MEMORY_OPTION_CHOICES[args.recompute],
                        checkpoint=Path(args.out).with_suffix(".ckpt.pt")
                        if mode == "per_prompt" else None,
                        identity_model=Path(args.identity_model) if args.identity_model
                        else None, **chosen)
    result = train_edit(G, clip, cfg, latents=latents,
                        reporter=Reporter(print_progress("train"), every=args.progress_every))
    written, notes = save_keeping_result(result.edit.save, args.out, stamp)
    print(json.dumps(result.edit.summary(), indent=2, default=str))
    print("memory options: " + describe_memory_options(result.edit.info["memory_options"]),
          file=sys.stderr)  # stdout stays the edit's JSON summary
    for warning in result.edit.info.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {written}" + (" (partial: " + result.stopped_reason + ")"
                                if result.partial else ""))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from ..images import save_png, save_tensor_images
    from ..editing.apply import apply_in_chunks
    from ..editing.edit import Edit
    from ..editing.visualize import effective_mask, mask_grid

    ensure_writable(args.out, is_folder=True)
    G = _generator(args)
    edits = [Edit.load(p) for p in args.edit]
    for e, p in zip(edits, args.edit):
        e.check_generator(G, p)
    if not args.latent and not args.seeds and edits[0].latents is not None:
        ws, names = edits[0].latents.to(G.w_avg.device), [f"trained{i:02d}" for i in
                                                           range(edits[0].latents.shape[0])]
    else:
        ws, names = _latents(args, G, "0-3")
    out = Path(args.out)
    strengths = [float(s) for s in str(args.strength).split(",")]
    checks_scenes = args.scene_check and any(e.scene_check is not None for e in edits)
    clip = _clip(args) if checks_scenes else None
    t0 = time.perf_counter()
    for s in strengths:
        res = apply_in_chunks(G, ws, edits, s, args.threshold, transfer=args.transfer,
                              progress=_apply_progress(len(names)), clip=clip)
        for prompt in res.transferred:
            print(f"note: per-image edit {prompt!r} applied to latents it was not trained on "
                  "(--transfer)", file=sys.stderr)
        for warning in res.warnings():
            print(f"warning: {warning}" + (" (--no-scene-check)" if "switch" in warning
                                           else ""), file=sys.stderr)
        tag = "" if len(strengths) == 1 else f"_s{s:g}"
        save_tensor_images(res.edited, [out / f"{n}_edited{tag}.png" for n in names])
    assert res.original is not None
    save_tensor_images(res.original, [out / f"{n}_original.png" for n in names])
    combined = effective_mask(res.masks[-1], G.img_resolution)
    for n, m in zip(names, combined):
        save_png((m.cpu().numpy() * 255).astype("uint8"), out / f"{n}_mask.png")
    save_png(mask_grid(G, res.masks[-1]), out / f"{names[0]}_layers.png")
    print(f"wrote {len(names)} edited images ({len(strengths)} strengths) to {out} in "
          f"{time.perf_counter() - t0:.2f}s")
    return 0


def _apply_progress(total: int) -> Any:
    """Progress for ``coral apply`` on stderr, for batches large enough to be worth it."""
    from ..progress import counted_phase

    if total < 64:
        return None
    t0 = time.perf_counter()
    return lambda done, n: print(counted_phase("apply", done, n, time.perf_counter() - t0),
                                 file=sys.stderr, flush=True)


def cmd_masks(args: argparse.Namespace) -> int:
    from ..images import image_to_uint8, save_png
    from ..atomic import write_text_atomic
    from ..editing.apply import apply_edits
    from ..editing.edit import Edit
    from ..editing.visualize import effective_mask, mask_grid, overlay

    G = _generator(args)
    edit = Edit.load(args.edit)
    edit.check_generator(G, args.edit)
    if edit.rows() > 1:  # a per-image edit: show image --index with its own latent
        edit = edit.row(args.index)
    if edit.latents is not None and not args.latent and args.seed is None:
        ws = edit.latents.to(G.w_avg.device)
    else:
        seed = args.seed if args.seed is not None else 0
        ws, _ = _latents(argparse.Namespace(seeds=str(seed), truncation=args.truncation,
                                            latent=args.latent), G, str(seed))
    # naming a seed or latent file is asking to see the edit there: a transfer, said below
    res = apply_edits(G, ws[:1], [edit], args.strength, args.threshold,
                      transfer=bool(args.latent) or args.seed is not None)
    for prompt in res.transferred:
        print(f"note: per-image edit {prompt!r} shown on a latent it was not trained on",
              file=sys.stderr)
    out = Path(args.out)
    save_png(mask_grid(G, res.masks[0]), out)
    assert res.original is not None
    over = overlay(image_to_uint8(res.original)[0], effective_mask(res.masks[0],
                                                                   G.img_resolution)[0])
    save_png(over, out.with_name(out.stem + "_overlay.png"))
    summary = edit.summary()
    summary["mask_area_per_layer"] = [0.0 if m is None else round(float(m.mean()), 4)
                                      for m in res.masks[0]]
    write_text_atomic(out.with_suffix(".json"), json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import (bench_apply, bench_generate, bench_hotpath, bench_invert,
                        bench_overhead, bench_prior, bench_startup, bench_threads,
                        bench_train)

    if args.what == "train" and args.batch is not None:  # one size given as --batch
        args.batches = str(args.batch)
    args.batch = args.batch or 4
    if args.what == "hotpath":
        bench_hotpath(args.resolution, args.batch, args.repeats, args.device)
    elif args.what == "generate":
        bench_generate(args.generator, args.batch, args.repeats, args.device, args.resolution)
    elif args.what == "prior":
        bench_prior(args.resolution, args.device)
    elif args.what == "overhead":
        bench_overhead(args.steps, args.repeats, args.device)
    elif args.what == "startup":
        bench_startup(args.repeats)
    elif args.what == "threads":
        bench_threads(args.steps or 100)
    elif args.what == "apply":
        bench_apply(args.resolution, args.batch, args.repeats, args.device)
    elif args.what == "invert":
        bench_invert(args.steps or 300, args.pti_steps, args.images, device=args.device,
                     generator=args.generator, clip=args.clip)
    else:
        bench_train(args.steps or 10, args.device, args.generator, args.clip, args.config,
                    tuple(int(b) for b in args.batches.split(",")),
                    MEMORY_OPTION_CHOICES[args.recompute],
                    tuple(args.forms.split(",")) if args.forms else None)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``apply``, ``masks`` and ``bench`` to the ``coral`` parser."""
    s = sub.add_parser("train", help="learn a CORAL edit for a prompt")
    s.set_defaults(run=cmd_train)
    _common(s, clip=True)
    s.add_argument("--prompt", required=True)
    s.add_argument("--neutral", default="", help="what the region shows now, e.g. 'a green background': region pruning "
                   "keeps the parts whose change points from it to the prompt; also the "
                   "directional CLIP loss's neutral text")
    s.add_argument("--directional", action="store_true")
    s.add_argument("--variant", choices=["ss", "can"], default="ss")
    s.add_argument("--direction", choices=["global", "mapper"], default="global")
    s.add_argument("--mode", choices=["per-image", "per-prompt"], default="per-image")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--seeds", default=None, help="per-image: the images to edit (e.g. 0-3)")
    s.add_argument("--latent", help="per-image: W+ latents file (.safetensors or .npz)")
    s.add_argument("--steps", type=int, default=_TRAIN.steps)
    s.add_argument("--batch", type=int, default=_TRAIN.batch)
    s.add_argument("--lr", type=float, default=None, help="default: the form's own")
    s.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                   help="coral: the library's defaults (every measured departure from the "
                        "paper on); paper: the published method with none. Options you set "
                        "override it")
    s.add_argument("--area", type=float, default=None,
                   help=f"mask area weight (coral: {_WEIGHTS.area})")
    s.add_argument("--tv", type=float, default=None, help=f"(coral: {_WEIGHTS.tv})")
    s.add_argument("--l2", type=float, default=None, help="default: the form's own")
    s.add_argument("--clip-on-edit", type=float, default=None,
                   help=f"(coral: {_WEIGHTS.clip_on_edit})")
    s.add_argument("--even-change", type=float, default=None,
                   help="how much an uneven change over the chosen region costs (rings of "
                        f"the old colour, muddy gradients; coral: {_WEIGHTS.even_change}, "
                        "paper: 0)")
    s.add_argument("--identity", type=float, default=None,
                   help="identity loss weight (faces; e.g. 0.1), needs --identity-model")
    s.add_argument("--identity-model", default=None, help="model_ir_se50.pth")
    s.add_argument("--area-weighting", default=None, choices=list(AREA_WEIGHTINGS),
                   help=f"(coral: {_WEIGHTS.area_weighting}; paper: uniform)")
    s.add_argument("--segments", type=int, default=None,
                   help=f"catalogue size K (SS; coral: {_TRAIN.num_segments})")
    s.add_argument("--max-layer", type=int, default=None)
    s.add_argument("--prune-tolerance", type=float, default=None,
                   help="region pruning: drop the segments (CAN: the catalogue's clusters) "
                        "the edit can do without while it keeps 1 - this share of its CLIP "
                        f"gain (0 = off, the paper's method; coral: {_TRAIN.prune_tolerance})")
    s.add_argument("--prune-at", type=float, default=None,
                   help=f"region pruning: at this share of the steps (coral: {_TRAIN.prune_at})")
    s.add_argument("--contest-steps", type=int, default=None,
                   help="region pruning (SS): each large region first gets this many steps "
                        f"of its own direction and the best one wins (0 = off; coral: "
                        f"{_TRAIN.contest_steps})")
    s.add_argument("--prune-batches", type=int, default=None,
                   help="region pruning, per prompt: judge this many batches of samples, not "
                        f"only the step's (coral: {_TRAIN.prune_batches})")
    s.add_argument("--prune-image-keep", type=float, default=None,
                   help="region pruning, per prompt: also keep a segment without which a judged "
                        "scene would keep less than this share of its own CLIP gain (0 = the "
                        f"mean alone; coral: {_TRAIN.prune_image_keep})")
    s.add_argument("--fit-scenes-only", action=argparse.BooleanOptionalAction, default=None,
                   help="per prompt: training samples that lack what the prompt names or "
                        "already show it add nothing to the CLIP term (--no-fit-scenes-only: "
                        f"every sample counts; coral: {'on' if _TRAIN.fit_scenes_only else 'off'})")
    s.add_argument("--split-clauses", action=argparse.BooleanOptionalAction, default=None,
                   help="a prompt that joins two things ('a red square on a blue background') "
                        "is learned as one edit per thing, laid one over the other "
                        f"(--no-split-clauses: one edit for the whole prompt; coral: "
                        f"{'on' if _TRAIN.split_clauses else 'off'})")
    s.add_argument("--absent-check", action=argparse.BooleanOptionalAction, default=None,
                   help="per image: leave an image that seems to lack what the prompt names "
                        "unchanged, with a warning; what follows 'with' is the change ('a "
                        "face with a beard' needs only a face) (--no-absent-check: edit it "
                        "anyway; coral: "
                        f"{'on' if _TRAIN.check_absent else 'off'})")
    s.add_argument("--hold-to-prior", action=argparse.BooleanOptionalAction, default=None,
                   help="per image: until the region choice the edit may only scale the "
                        "direction prior, per layer (an image it cannot take far enough is "
                        "then freed), and the masks start where the prior changes the "
                        "picture (the segments are split there, so long hair or a wider "
                        "mouth has a region of its own); an image still under "
                        f"{_TRAIN.free_below} of the way at the end is trained again free "
                        "(twice the time for it); keeps other parts of a face as they were "
                        f"(coral: {'on' if _TRAIN.along_prior else 'off'}; "
                        "--no-hold-to-prior: free from the start, never a second training)")
    s.add_argument("--prior-samples", type=int, default=None,
                   help="global direction: start from where the generator samples (of "
                        "this many, cached per generator and CLIP) that the CLIP ranks "
                        "highest for the prompt lie (see --prior-form; 0 = start at ~0; "
                        f"coral: {_TRAIN.prior_samples})")
    s.add_argument("--prior-form", choices=list(PRIOR_FORMS), default=None,
                   help="matched: the best samples less their look-alikes (changes what "
                        "the prompt names and little else); mean: the best samples' mean "
                        "less the mean of all (coral: matched when held to the prior, mean "
                        "otherwise)")
    s.add_argument("--bf16", choices=list(MEMORY_OPTION_CHOICES), nargs="?", const="on",
                   default="auto",
                   help="bf16 autocast on CUDA, losses and mask maths stay in float32 (auto: "
                        "at 512 px and up with less than 16 GiB free; --bf16 alone: on)")
    s.add_argument("--recompute", choices=list(MEMORY_OPTION_CHOICES), default="auto",
                   help="recompute activations in backward to save memory (auto: CPU at 256 "
                        "px and up; GPU at 512 px and up with less than 16 GiB free)")
    s.add_argument("--progress-every", type=int, default=10)
    s.add_argument("--out", required=True)

    s = sub.add_parser("apply", help="apply edits to seeds or latents")
    s.set_defaults(run=cmd_apply)
    _common(s, clip=True)
    s.add_argument("--no-scene-check", dest="scene_check", action="store_false",
                   help="per-prompt edits: edit every image, also those that lack what the "
                        "edit names or already show it, and keep edits that went far past the "
                        "prompt or barely moved (default: those images are left unchanged, "
                        "judged with --clip, the CLIP the edit was trained with)")
    s.add_argument("--edit", action="append", required=True, help="repeat to stack edits")
    s.add_argument("--seeds", default=None)
    s.add_argument("--latent", default=None)
    s.add_argument("--strength", default="1.0", help="one value or a sweep: 0,0.5,1")
    s.add_argument("--threshold", type=float, default=None)
    s.add_argument("--transfer", action="store_true",
                   help="apply a per-image edit to latents it was not trained on")
    s.add_argument("--out", required=True)

    s = sub.add_parser("masks", help="per-layer mask grid, overlay and summary")
    s.set_defaults(run=cmd_masks)
    _common(s)
    s.add_argument("--edit", required=True)
    s.add_argument("--seed", type=int, default=None,
                   help="show this seed (default: the edit's own image, or seed 0)")
    s.add_argument("--index", type=int, default=0, help="per-image edits: which image")
    s.add_argument("--latent", default=None)
    s.add_argument("--strength", type=float, default=1.0)
    s.add_argument("--threshold", type=float, default=None)
    s.add_argument("--out", required=True)

    s = sub.add_parser("bench", help="print speed / memory figures")
    s.set_defaults(run=cmd_bench)
    s.add_argument("what", choices=["generate", "apply", "train", "invert", "hotpath", "prior",
                                    "overhead", "startup", "threads"],
                   help="which path to time")
    s.add_argument("--resolution", type=int, default=256,
                   help="generate/apply/hotpath/prior: random config-f generator at this size")
    s.add_argument("--batch", type=int, default=None,
                   help="images per batch (generate/apply: default 4; train: one batch size, "
                        "the same as --batches N)")
    s.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    s.add_argument("--steps", type=int, default=None,
                   help="train: steps per form (default 10); invert: projector steps (300)")
    s.add_argument("--pti-steps", type=int, default=200, help="invert: pivotal-tuning steps")
    s.add_argument("--images", type=int, default=4, help="invert: images per set")
    s.add_argument("--config", default=None, choices=["ffhq256", "ffhq512", "ffhq1024"],
                   help="train: real architectures with random weights (config-f StyleGAN2 "
                        "+ ViT-B/32), nothing downloaded")
    s.add_argument("--batches", default="4", help="train: batch sizes, e.g. 1,2,4")
    s.add_argument("--generator", default=None, help="a generator file instead")
    s.add_argument("--clip", default=None, help="a CLIP file or folder instead")
    s.add_argument("--recompute", choices=list(MEMORY_OPTION_CHOICES), default="auto",
                   help="train: activation recomputation (auto: the library's rule)")
    s.add_argument("--forms", default=None,
                   help="train: only these forms, e.g. 'ss+global per_image'")
    s.add_argument("--device", default=None, help="cuda, mps or cpu (default: best)")

