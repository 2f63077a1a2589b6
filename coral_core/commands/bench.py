"""Benchmarks that print figures (never asserted in tests): apply cost and training cost."""
from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from ..devices import peak_rss_mib, pick_device
from ..stylegan import Generator, GeneratorConfig
from ..editing.directions import GlobalDirection
from ..editing.edit import Edit
from ..editing.selectors import SegmentSelector


def median_time(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _edit_selecting(G: Generator, layers: list[int], k: int = 6) -> Edit:
    from ..editing.catalogue import build_catalogue

    sel = SegmentSelector(len(G.conv_layers), k)
    with torch.no_grad():
        sel.logits.fill_(-8.0)
        for layer in layers:
            sel.logits[0, layer - 1, : k // 2] = 8.0
    cat = build_catalogue(G, k=k, samples=8, iterations=5)
    return Edit("ss", "global", "per_prompt", "bench", "", GlobalDirection(G.num_ws, G.w_dim),
                sel, G.fingerprint(), G.img_resolution, G.num_ws, G.w_dim, catalogue=cat)


def config_f_generator(resolution: int, device: torch.device, seed: int = 0) -> Generator:
    """A random generator shaped like NVIDIA's config-f (channel_base 32768, channel_max 512,
    8 mapping layers, 512-d z/w) at the given resolution."""
    cfg = GeneratorConfig(img_resolution=resolution, channel_base=32768, channel_max=512,
                          mapping_layers=8)
    torch.manual_seed(seed)
    return Generator(cfg).train(False).requires_grad_(False).to(device)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20, "GPU allocated"
    return peak_rss_mib(), "process peak RSS"


@torch.no_grad()
def bench_generate(generator: str | None = None, batch: int = 4, repeats: int = 5,
                   device: str | None = None, resolution: int = 256) -> dict[str, float]:
    """ms per image (mapping + synthesis, const noise) and peak memory."""
    from ..cache import get_generator

    dev = pick_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    G = get_generator(generator, dev).generator if generator else \
        config_f_generator(resolution, dev)
    z = torch.randn(batch, G.z_dim, device=dev)
    t = median_time(lambda: G.synthesize(G.mapping_ws(z, 0.7), noise_mode="const"), repeats, dev)
    peak, kind = _peak_memory(dev)
    name = generator or f"random config-f {resolution}px"
    print(f"{name}: {G.parameter_count():,} params, device {dev}, batch {batch}: "
          f"{t * 1000 / batch:.1f} ms/image ({t * 1000:.1f} ms/batch, median of {repeats}); "
          f"peak memory {peak:.0f} MiB ({kind})")
    return {"ms_per_image": t * 1000 / batch, "peak_mib": peak}


def bench_hotpath(resolution: int = 256, batch: int = 4, repeats: int = 5,
                  device: str | None = None) -> dict[str, dict[str, float]]:
    """The two forms of the modulated convolution side by side, interleaved run by run (so a
    busy machine slows both alike): generator forward, and forward + backward w.r.t. W+ (the
    cost of every edit and inversion step). Ratios are to the fused form, NVlabs' path."""
    from ..stylegan import ops

    dev = pick_device(device)
    G = config_f_generator(resolution, dev)
    ws = G.mapping_ws(torch.randn(batch, G.z_dim, generator=torch.Generator().manual_seed(0))
                      .to(dev))
    noise = G.make_noise(batch, "const")

    def forward() -> None:
        with torch.no_grad():
            G.synthesize(ws, noise=noise)

    def forward_backward() -> None:
        w = ws.clone().requires_grad_(True)
        G.synthesize(w, noise=noise).square().mean().backward()

    default = ops.FUSED_MODCONV
    times: dict[str, dict[bool, list[float]]] = {"forward": {True: [], False: []},
                                                 "forward + backward": {True: [], False: []}}
    try:
        for _ in range(repeats):
            for path, fn in (("forward", forward), ("forward + backward", forward_backward)):
                for fused in (True, False):
                    ops.FUSED_MODCONV = fused
                    times[path][fused].append(median_time(fn, 1, dev))
    finally:
        ops.FUSED_MODCONV = default
    print(f"device {dev}, random config-f {resolution}px, batch {batch}, median of {repeats} "
          f"interleaved runs; library default: {'fused' if default else 'unfused'}")
    out = {}
    for path, by in times.items():
        fused_s, unfused_s = (float(np.median(by[f])) for f in (True, False))
        out[path] = {"fused_s": fused_s, "unfused_s": unfused_s}
        print(f"{path:>20}: fused (NVlabs' path) {fused_s * 1000:.0f} ms = 1.00, "
              f"unfused {unfused_s * 1000:.0f} ms = {unfused_s / fused_s:.2f}")
    return out


def square_masks(G: Generator, coverage: float, batch: int = 1) -> list[torch.Tensor]:
    """Per-layer masks that are 1 on one square covering ``coverage`` of the image and exactly
    0 elsewhere: with ``batch`` 1 the same square (off centre) for every image, otherwise a
    different corner per image (objects in different places)."""
    out = []
    for info in G.conv_layers:
        r = info.resolution
        side = max(1, round(r * coverage ** 0.5))
        mask = torch.zeros(batch, 1, r, r, device=G.w_avg.device)
        for i in range(batch):
            top, left = ((min(r - side, r // 5),) * 2 if batch == 1 else
                         ((r - side) * (i // 2 % 2), (r - side) * (i % 2)))
            mask[i, :, top:top + side, left:left + side] = 1.0
        out.append(mask)
    return out


@torch.no_grad()
def bench_apply(resolution: int = 256, batch: int = 4, repeats: int = 5,
                device: str | None = None) -> dict[str, float]:
    """Apply time / plain generation time for edits selecting half of the layers.

    Two kinds of region: a segment selection (a random catalogue, half its segments, masks
    thresholded so unselected layers are exactly zero: scattered over the image), and a square
    covering 25 % of the image (an object), where the edited branch runs on the mask's box
    only: the same square in every image, or one in a different corner per image. Three halves are measured, because the cost depends on which layers are chosen.
    """
    from ..editing.apply import apply_edits
    from ..editing.blend import stacked_synthesis

    dev = pick_device(device)
    G = config_f_generator(resolution, dev)
    ws = G.mapping_ws(torch.randn(batch, G.z_dim, device=dev), 0.7)
    noise = G.make_noise(batch, "const")
    plain = median_time(lambda: G.synthesize(ws, noise=noise), repeats, dev)
    n = len(G.conv_layers)
    half = n // 2
    choices = {"coarse half": list(range(1, half + 1)),
               "alternate layers": list(range(1, n + 1, 2)),
               "fine half": list(range(n - half + 1, n + 1))}
    delta = torch.randn(1, G.num_ws, G.w_dim, device=dev)
    square, corners = square_masks(G, 0.25), square_masks(G, 0.25, batch)
    print(f"device {dev}, {resolution}px config-f-shaped generator ({G.parameter_count():,} "
          f"params), batch {batch}, {n} conv layers; median of {repeats}")
    print(f"plain generation: {plain * 1000:.1f} ms")
    out = {"plain_s": plain}
    for name, layers in choices.items():
        edit = _edit_selecting(G, layers).to(dev)
        t_edit = median_time(partial(apply_edits, G, ws, [edit], 1.0, 0.5, return_original=False),
                       repeats, dev)
        t_both = median_time(partial(apply_edits, G, ws, [edit], 1.0, 0.5), repeats, dev)
        masks = [m if i + 1 in layers else None for i, m in enumerate(square)]
        t_square = median_time(partial(stacked_synthesis, G, ws, [(delta, masks)], noise),
                               repeats, dev)
        masks = [m if i + 1 in layers else None for i, m in enumerate(corners)]
        t_corners = median_time(partial(stacked_synthesis, G, ws, [(delta, masks)], noise),
                                repeats, dev)
        print(f"{name:>17} (layers {layers[0]}..{layers[-1]}, {len(layers)} of {n}): "
              f"segments: edited only {t_edit * 1000:.1f} ms = {t_edit / plain:.2f}x plain, "
              f"edited + original {t_both * 1000:.1f} ms = {t_both / plain:.2f}x; "
              f"25 % square: {t_square * 1000:.1f} ms = {t_square / plain:.2f}x, "
              f"in a different corner per image {t_corners / plain:.2f}x")
        out[f"{name} ratio"] = t_edit / plain
        out[f"{name} ratio with original"] = t_both / plain
        out[f"{name} ratio 25% square"] = t_square / plain
        out[f"{name} ratio 25% square per image"] = t_corners / plain
    return out


REAL_SCALE = {"ffhq256": 256, "ffhq512": 512, "ffhq1024": 1024}


def random_vit_b32(device: torch.device) -> Any:
    """OpenAI ViT-B/32's exact architecture with random weights (open_clip, nothing fetched)."""
    import open_clip

    from ..clip_model import DEFAULT_MEAN, DEFAULT_STD, CoralClip

    model = open_clip.create_model("ViT-B-32", pretrained=None, device="cpu")
    model = model.float().train(False).requires_grad_(False).to(device)
    return CoralClip(model, open_clip.get_tokenizer("ViT-B-32"), 224, DEFAULT_MEAN,
                     DEFAULT_STD, "ViT-B-32 (random weights)")


def bench_train(steps: int = 10, device: str | None = None, generator: str | None = None,
                clip: str | None = None, config: str | None = None,
                batches: tuple[int, ...] = (4,), recompute: bool | None = None,
                forms: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
    """Seconds per training step and peak memory for each (variant, direction, mode).

    ``config`` (ffhq256 / ffhq512 / ffhq1024) builds the real architectures with random
    weights, a StyleGAN2 config-f generator and an OpenAI ViT-B/32, so real-scale cost can be
    measured with no download; it times the two forms users run most (SS per image, CAN per
    prompt) at each batch size.
    """
    from ..cache import get_clip, get_generator
    from ..world.assets import DEMO_CLIP, DEMO_GENERATOR, require
    from ..editing.memory import describe_memory_options
    from ..editing.trainer import TrainConfig, train_edit

    dev = pick_device(device)
    if config is not None:
        if config not in REAL_SCALE:
            raise ValueError(f"config must be one of {sorted(REAL_SCALE)}")
        G = config_f_generator(REAL_SCALE[config], dev)
        C = random_vit_b32(dev)
        chosen = [("ss", "global", "per_image"), ("can", "global", "per_prompt")]
    else:
        G = get_generator(generator or require(DEMO_GENERATOR), dev).generator
        C = get_clip(clip or require(DEMO_CLIP), None, dev)
        chosen = [(v, d, m) for v in ("ss", "can") for d in ("global", "mapper")
                  for m in ("per_image", "per_prompt")]
    if forms:  # e.g. ("ss+global per_image",)
        chosen = [f for f in chosen if f"{f[0]}+{f[1]} {f[2]}" in forms]
    results = {}
    print(f"device {dev}, generator {G.img_resolution}px ({G.parameter_count():,} params), "
          f"CLIP {C.model_id}, {steps} steps each, batch {list(batches)}")
    from ..editing.catalogue import catalogue_for

    from ..editing.presets import preset_defaults
    from ..editing.prior import sample_bank_for

    defaults = preset_defaults()
    catalogue_for(G, defaults.num_segments)  # built once, cached: not timed
    if defaults.prior_samples:  # the prior's sample bank: once per generator and CLIP, cached
        t0 = time.perf_counter()
        sample_bank_for(G, C, defaults.prior_samples)
        print(f"prior sample bank ({defaults.prior_samples} samples, once per generator and "
              f"CLIP, then cached; not in the per-step figures): "
              f"{time.perf_counter() - t0:.1f} s")
    for batch in batches:
        for variant, direction, mode in chosen:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            rss0 = peak_rss_mib()
            result = train_edit(G, C, TrainConfig(prompt="a red circle", variant=variant,
                                                  direction=direction, mode=mode, steps=steps,
                                                  batch=batch, recompute=recompute,
                                                  # random weights: the fit check could
                                                  # skip training and time nothing
                                                  check_fit=False))
            phases = _train_phases(result.edit.info, steps)
            peak, kind = _peak_memory(dev)
            grew = peak_rss_mib() - rss0
            key = f"{variant}+{direction} {mode} batch {batch}"
            results[key] = {**phases, "peak_mib": peak}
            print(f"{key:>26}: {phases['s_per_step']:.3f} s/step; once per edit: set-up "
                  f"{phases['setup_s']:.1f} s, region contest and pruning "
                  f"{phases['region_choice_s']:.1f} s; peak memory {peak:.0f} MiB "
                  f"({kind}{'' if dev.type == 'cuda' else f', +{grew:.0f}'}); "
                  + describe_memory_options(result.edit.info["memory_options"]))
    return results


def bench_prior(resolution: int = 256, device: str | None = None,
                samples: int | None = None) -> dict[str, float]:
    """The first edit's one-time cost on a new generator: the direction prior's sample bank
    (``samples``, default the library's) for a random config-f generator at ``resolution`` and
    a random-weight ViT-B/32 (the real architectures' cost; nothing downloaded, nothing
    cached), with the peak memory it added."""
    from ..editing.presets import preset_defaults
    from ..editing.memory import images_per_chunk
    from ..editing.prior import build_sample_bank
    from ..progress import counted_phase

    dev = pick_device(device)
    samples = samples or preset_defaults().prior_samples
    G = config_f_generator(resolution, dev)
    C = random_vit_b32(dev)
    chunk = images_per_chunk(G)
    print(f"device {dev}, config-f generator {resolution}px, CLIP ViT-B/32 (random weights): "
          f"{samples} samples, {chunk} at a time")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = peak_rss_mib()
    t0 = time.perf_counter()

    def report(done: int, total: int) -> None:
        if done and done % max(1, total // 4) < chunk or done == total:
            print("  " + counted_phase("sample bank", done, total, time.perf_counter() - t0))

    build_sample_bank(G, C, samples, report)
    seconds = time.perf_counter() - t0
    peak, kind = _peak_memory(dev)
    print(f"sample bank: {seconds:.1f} s ({seconds / samples * 1000:.0f} ms per sample); peak "
          f"memory {peak:.0f} MiB ({kind}{'' if dev.type == 'cuda' else f', +{peak_rss_mib() - rss0:.0f} during the build'})")
    return {"seconds": seconds, "peak_mib": peak, "samples": samples}


def bench_overhead(steps: int | None = None, repeats: int = 3, device: str | None = None
                   ) -> dict[str, float]:
    """What CORAL's departures cost over a plain StyleCLIP-style optimisation (the same prompt,
    steps, prior and latents, no masks), per-image edits on the demo, runs interleaved so a
    changing load hits every form alike; the median wall time of each and its ratio to plain."""
    import statistics

    from ..cache import get_clip, get_generator
    from ..editing.presets import preset_config
    from ..editing.trainer import train_edit
    from ..world.assets import DEMO_CLIP, DEMO_GENERATOR, require

    dev = pick_device(device)
    G = get_generator(require(DEMO_GENERATOR), dev).generator
    C = get_clip(require(DEMO_CLIP), None, dev)
    ws = G.mapping_ws(G.z_from_seeds([0]).to(dev))
    forms = {"plain (no masks)": ("coral", {"no_masks": True}),
             "CORAL-SS, the paper's form": ("paper", {}),
             "CORAL-SS, defaults": ("coral", {})}
    times: dict[str, list[float]] = {name: [] for name in forms}
    region: dict[str, list[float]] = {name: [] for name in forms}
    chosen = {"steps": steps} if steps else {}
    for _ in range(repeats):
        for name, (preset, extra) in forms.items():
            cfg = preset_config(preset, prompt="an orange background", batch=1, seed=0,
                                **chosen, **extra)
            info = train_edit(G, C, cfg, latents=ws).edit.info
            times[name].append(float(info["wall_seconds"]))
            region[name].append(float(info.get("region_choice_seconds", 0.0)))
    plain = statistics.median(times["plain (no masks)"])
    out = {}
    for name in forms:
        t = statistics.median(times[name])
        out[name] = t / plain
        print(f"{name:>28}: {t:.2f} s per edit ({t / plain:.2f}x plain), of which the region "
              f"contest and pruning {statistics.median(region[name]):.2f} s")
    return out


def _time_coral(args: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds a ``coral`` command takes in a new process, as a user runs it."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "coral_core", *args], check=True,
                   capture_output=True, env=env, timeout=1800)
    return time.perf_counter() - t0


def bench_startup(repeats: int = 3) -> dict[str, float]:
    """Wall time of ``coral --help`` and of a demo ``coral apply`` of one seed, each in a new
    process as a user runs them (median of ``repeats``): start-up is most of both."""
    import statistics
    import tempfile

    from ..world.assets import DEMO_EDITS, SHIPPED_EDITS, require

    # the CLI's default generator is the shapes world's, so its shipped edit
    edit = require(DEMO_EDITS / SHIPPED_EDITS["shapes"])
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        runs = {"coral --help": ["--help"],
                "coral apply (demo, one seed)": ["apply", "--edit", str(edit), "--seeds", "0",
                                                 "--out", folder]}
        for name, args in runs.items():
            out[name] = statistics.median(_time_coral(args) for _ in range(repeats))
            print(f"{name:>30}: {out[name]:.2f} s (median of {repeats})")
    return out


def bench_threads(steps: int = 100) -> dict[str, float]:
    """The demo ``coral train`` (4 seeds) quiet and beside two busy processes, each in a new
    process with the CLI's own thread policy (OMP_NUM_THREADS unset): what a shared machine
    costs it. A first short run warms the caches so both timed runs do the same work."""
    import os
    import subprocess
    import sys
    import tempfile

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with tempfile.TemporaryDirectory() as folder:
        def train(n: int) -> float:
            return _time_coral(["train", "--prompt", "an orange background", "--seeds", "0-3",
                                "--steps", str(n), "--out", os.path.join(folder, "e.safetensors")],
                               env)

        train(1)
        quiet = train(steps)
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        try:
            loaded = train(steps)
        finally:
            for p in busy:
                p.kill()
                p.wait()
    print(f"demo coral train ({steps} steps, 4 seeds): quiet {quiet:.1f} s, beside two busy "
          f"processes {loaded:.1f} s ({loaded / quiet:.1f}x; goal 2.5x)")
    return {"quiet_s": quiet, "loaded_s": loaded, "ratio": loaded / quiet}


def _train_phases(info: dict[str, Any], steps: int) -> dict[str, float]:
    """A trained edit's time split as a user meets it: set-up before step 1 (catalogue pieces,
    sample bank, prior; once per edit), the region choice (contest and pruning; once per
    edit, at ``prune_at`` of the steps), and the remaining time per optimisation step."""
    region = float(info.get("region_choice_seconds", 0.0))
    return {"s_per_step": (float(info["wall_seconds"]) - region) / max(1, steps),
            "setup_s": float(info.get("setup_seconds", 0.0)), "region_choice_s": region}


def bench_invert(steps: int = 300, pti_steps: int = 200, n: int = 4,
                 device: str | None = None, generator: str | None = None,
                 clip: str | None = None) -> dict[str, dict[str, float]]:
    """PSNR / SSIM / seconds per image of W, W+ and W+ with PTI, on the demo world: images the
    generator drew from known latents, and renders it never saw."""
    from ..cache import get_clip, get_generator
    from ..inversion import InvertConfig, invert
    from ..world.assets import DEMO_CLIP, DEMO_GENERATOR, require
    from ..world.render import render
    from ..world.scene import random_scenes

    dev = pick_device(device)
    G = get_generator(generator or require(DEMO_GENERATOR), dev).generator
    C = get_clip(clip or require(DEMO_CLIP), None, dev)
    with torch.no_grad():
        known = G.synthesize(G.mapping_ws(G.z_from_seeds(range(1000, 1000 + n)).to(dev)))
    unseen, _ = render(random_scenes(n, 31337), G.img_resolution)
    sets = {"generated from known latents": known, "unseen renders": unseen.to(dev)}
    runs = {"W": InvertConfig(space="w", steps=steps),
            "W+": InvertConfig(space="w+", steps=steps),
            "W+ then PTI": InvertConfig(space="w+", steps=steps, pti_steps=pti_steps)}
    results: dict[str, dict[str, float]] = {}
    print(f"device {dev}, {G.img_resolution}px demo generator, {n} images per set, "
          f"{steps} steps (+{pti_steps} PTI), perceptual term: CLIP features")
    for set_name, images in sets.items():
        for run_name, cfg in runs.items():
            res = invert(G, images, cfg, clip=C)
            key = f"{set_name} / {run_name}"
            results[key] = {"psnr": float(np.mean(res.psnr)), "ssim": float(np.mean(res.ssim)),
                            "s_per_image": res.seconds / n}
            print(f"{key:>45}: PSNR {results[key]['psnr']:.2f} dB, SSIM "
                  f"{results[key]['ssim']:.3f}, {results[key]['s_per_image']:.2f} s/image")
    return results
