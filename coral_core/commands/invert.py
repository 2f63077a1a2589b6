"""``coral invert``: photos projected into W / W+ (optionally with pivotal tuning)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from ..atomic import ensure_writable, file_stamp, save_keeping_result
from ..errors import InputError


def cmd_invert(args: argparse.Namespace) -> int:
    import torch

    from ..cache import get_clip, get_generator
    from ..formats import save_generator
    from ..images import load_photo, save_tensor_images
    from ..inversion import InvertConfig, invert, prepare_images
    from ..latents import save_latents
    from ..progress import Reporter, print_progress
    from ..world.assets import DEMO_GENERATOR, require

    ensure_writable(args.out)
    out = Path(args.out)
    pti_out = out.with_name(out.stem + "_pti.safetensors")
    stamps = {out: file_stamp(out), pti_out: file_stamp(pti_out)}
    photos = [load_photo(p) for p in args.image]
    G = get_generator(args.generator or require(DEMO_GENERATOR), args.device).generator
    target = torch.cat([prepare_images(p, G.img_resolution) for p in photos])
    clip = get_clip(args.clip, None, args.device) if args.clip else None
    init = None
    if args.e4e:
        from ..inversion.e4e import load_e4e

        init = load_e4e(args.e4e).encode(target)
    res = invert(G, target, InvertConfig(space=args.space, steps=args.steps,
                                         pti_steps=args.pti), clip=clip,
                 vgg16_path=args.vgg16, init_ws=init,
                 reporter=Reporter(print_progress("invert"), every=25))
    meta = {"generator_fingerprint": (res.generator or G).fingerprint(), "space": args.space}
    results: list[tuple[Callable[[Path], object], Path]] = [
        (lambda p: save_latents(res.ws, p, meta), out)]
    tuned = res.generator
    if tuned is not None:  # a tuned generator is minutes of work: keep it as well
        results.append((lambda p: save_generator(tuned, p), pti_out))
    problems: list[str] = []
    notes: list[str] = []
    written: list[Path] = []
    for save, destination in results:  # each is attempted: one failure loses no other
        try:
            path, said = save_keeping_result(save, destination, stamps[destination])
            written.append(path)
            notes += said
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        raise InputError("; ".join(problems))
    save_tensor_images(res.reconstruction, [written[0].with_name(f"{written[0].stem}_rec{i}.png")
                                            for i in range(len(photos))])
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps({"psnr": res.psnr, "ssim": res.ssim, "seconds": round(res.seconds, 2),
                      "perceptual": res.perceptual}, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-command(s) to the ``coral`` parser."""
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
    s.set_defaults(run=cmd_invert)
