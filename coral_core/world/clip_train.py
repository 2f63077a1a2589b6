"""Training the demo world's small CLIP (an open_clip ViT of our own size) and scoring it.

Contrastive loss where every caption in the batch that is true of an image counts as a positive
(captions come at several levels of detail, so many are shared). Every batch also holds a *twin*
of each scene with attributes swapped between the background and an object, or between the two
objects (``scene.swap_*``): the same words are then false of a near-identical picture, which is
what teaches the CLIP *where* a colour is (binding). Optionally (``blend_twins``, used to
fine-tune the shipped CLIP) every batch also holds a *blend* of each scene: one region's colour
mixed part-way towards another palette colour, a negative for every caption that names that
region's colour. Why: an edit is driven up the CLIP's score for "a red circle", and the CLIP
trained on pure palette colours alone scored an object 30 % of the way to another colour above
the pure one in 13 % of cases (``blend_accuracy``), so edits could stop at colours the judge
reads as neither. Saved as an open_clip ``local-dir`` folder, so it loads through exactly the path real
CLIP files take.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..atomic import atomic_path, write_text_atomic
from ..progress import Reporter
from .captions import ATTRIBUTE_PROMPTS, CaptionSpec, caption_for, with_article
from .render import render
from .scene import (COLOUR_NAMES, DEMO_RESOLUTION, SHAPES, SceneBatch, random_scenes,
                    swap_background_and_object, swap_object_colours)

DEMO_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 64,
    # A ViT with 8 px patches on 64 px images (64 tokens). v1 (32 px, 17 tokens) read shapes at
    # 68 %; a ModifiedResNet tower was worse on every attribute (87/81/80 %). Width 96 and 4
    # layers: 0.48 s per 256-image step on 2 CPU cores (6 layers of 128: 1.28 s).
    "vision_cfg": {"image_size": DEMO_RESOLUTION, "layers": 4, "width": 96, "patch_size": 8,
                   "head_width": 32},
    # The token embedding (49408 x width) is most of the file: width 64 keeps the CLIP ~8 MB.
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 4,
                 "layers": 4},
}
PREPROCESS_CFG = {"mean": [0.48145466, 0.4578275, 0.40821073],
                  "std": [0.26862954, 0.26130258, 0.27577711],
                  "interpolation": "bicubic", "resize_mode": "shortest"}


def augment(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Small shifts, brightness changes and blur, so the CLIP also reads imperfect generator
    output; no hue changes (colour names must stay true). ``g`` is a CPU generator, so the
    augmentation is the same on every device."""
    b = img.shape[0]
    shift = torch.randint(-2, 3, (2,), generator=g).tolist()
    img = torch.roll(img, shifts=shift, dims=(2, 3))
    gain = (1 + 0.15 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)).to(img.device)
    img = ((img + 1) * gain - 1).clamp(-1, 1)
    blur = (torch.rand(b, generator=g) < 0.3).to(img.device)
    k = torch.tensor([1.0, 2.0, 1.0], device=img.device)
    k = (k[:, None] * k[None]) / 16
    blurred = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3),
                       groups=3)
    return torch.where(blur[:, None, None, None], blurred, img)


def with_twins(scenes: SceneBatch, g: torch.Generator) -> SceneBatch:
    """The batch followed by one hard-negative twin per scene: background/object colours
    swapped for most, the two objects' colours swapped for a third of the two-object scenes."""
    bg_swap = swap_background_and_object(scenes)
    obj_swap = swap_object_colours(scenes)
    use_obj = scenes.present[:, 1] & (torch.rand(len(scenes), generator=g) < 0.33
                                       ).to(scenes.present.device)
    twin = bg_swap.clone()
    twin.background = torch.where(use_obj, obj_swap.background, bg_swap.background)
    twin.colour = torch.where(use_obj[:, None], obj_swap.colour, bg_swap.colour)
    return SceneBatch(*(torch.cat([getattr(scenes, f), getattr(twin, f)])
                        for f in SceneBatch.__dataclass_fields__))


BLEND_RANGE = (0.3, 0.7)  # how far a blend twin's region moves towards the other colour


def blend_twins(scenes: SceneBatch, img: torch.Tensor, masks: torch.Tensor,
                g: torch.Generator, t: float | None = None
                ) -> tuple[torch.Tensor, SceneBatch, torch.Tensor]:
    """One part-way recolour per scene: (images, the fully recoloured scenes, regions).

    The background (half the time) or one present object takes a mix of its colour and another
    valid palette colour. Rendering is linear in a region's colour, so mixing the two renders
    inside the region's mask is exactly the render of the mixed colour. A caption is true of a
    blend only if it is true of both ends (it does not speak of that region's colour). ``t``
    fixes the mix (else drawn from BLEND_RANGE); a region is 0 for the background, 1 + k for
    object k."""
    b, n_col = len(scenes), len(COLOUR_NAMES)
    dev = scenes.background.device
    use_bg = (torch.rand(b, generator=g) < 0.5).to(dev)
    second = scenes.present[:, 1] & (torch.rand(b, generator=g) < 0.5).to(dev)
    region = torch.where(use_bg, torch.zeros_like(scenes.background),
                         1 + second.long())  # 0 = background, 1 + k = object k
    alt = scenes.clone()
    offsets = torch.randint(1, n_col, (b,), generator=g).to(dev)
    rows = torch.arange(b, device=dev)
    for _ in range(n_col):  # walk round the palette to the first colour that stays valid
        new = (torch.where(use_bg, scenes.background, scenes.colour[rows, second.long()])
               + offsets) % n_col
        clash_bg = use_bg & ((scenes.colour == new[:, None]) & scenes.present).any(1)
        clash_obj = ~use_bg & ((new == scenes.background) | (
            scenes.present[:, 1] & (scenes.colour[rows, 1 - second.long()] == new)))
        bad = clash_bg | clash_obj
        if not bool(bad.any()):
            break
        offsets = torch.where(bad, offsets % (n_col - 1) + 1, offsets)
    alt.background = torch.where(use_bg, new, scenes.background)
    k = second.long()
    alt.colour[rows, k] = torch.where(use_bg, scenes.colour[rows, k], new)
    img_alt, _ = render(alt, img.shape[-1])
    m = masks[rows, region][:, None]
    mix = (torch.full((b, 1, 1, 1), t) if t is not None else
           torch.empty(b, 1, 1, 1).uniform_(*BLEND_RANGE, generator=g)).to(dev)
    return img * (1 - mix * m) + img_alt * (mix * m), alt, region


def load_clip_weights(model: torch.nn.Module, folder: Path) -> None:
    """Start from a CLIP folder this module wrote (to fine-tune the shipped CLIP)."""
    from ..errors import InputError
    from ..formats.weights import load_weights_file

    path = Path(folder) / "open_clip_model.safetensors"
    if not path.is_file():
        raise InputError(f"{path}: no open_clip_model.safetensors to continue from (expected "
                         "a folder written by `coral world train-clip`)")
    state = load_weights_file(path, "demo CLIP weights")
    model.load_state_dict({k: v.float() for k, v in state.items()})


def train_clip(out_dir: Path, steps: int = 6000, batch: int = 128, lr: float = 1e-3,
               seed: int = 0, reporter: Reporter | None = None, device: str = "cpu",
               max_minutes: float | None = None, stop_at: int | None = None,
               init_from: Path | None = None, blends: bool = False,
               world: str = "shapes", focus: tuple[str, ...] = (),
               report_renders: int = 1000) -> dict[str, Any]:
    """Train (from scratch, or on from the CLIP folder ``init_from``) and write the local-dir
    folder ``out_dir``; returns the report (its shapes-world zero-shot figures read
    ``report_renders`` held-out renders). ``blends`` adds a blend twin per scene (see the
    module docstring).

    ``max_minutes`` stops early (the report says so) so a lent GPU's time limit is never lost.
    """
    import open_clip
    from open_clip.model import CLIP

    if focus and world != "faces":
        from ..errors import InputError

        raise InputError("--focus stresses face attributes: use it with --world faces")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    model = CLIP(**DEMO_CLIP_CFG)
    if init_from is not None:
        load_clip_weights(model, init_from)
    model = model.to(device)
    tokenizer = open_clip.SimpleTokenizer(context_length=DEMO_CLIP_CFG["text_cfg"]
                                          ["context_length"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    token_cache: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    budget = StepBudget(max_minutes)
    loss_value, done = float("nan"), 0
    step = 0
    while step < steps:
        step += 1
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(lr, step, steps)
        batch_seed = 10_000_000 + seed * 100_000 + step
        if world == "faces":
            from .faces.clip_data import training_batch

            img, texts, truth = training_batch(batch, batch_seed, rng, g, device, focus)
        else:
            scenes = with_twins(random_scenes(batch, batch_seed, device), g)
            img, masks = render(scenes)
            specs = [caption_for(scenes, i, rng) for i in range(len(scenes))]
            texts = [s.text() for s in specs]
            truth = _truth(specs, scenes)
        for t in texts:
            if t not in token_cache:
                token_cache[t] = tokenizer([t])[0].to(device)
        tokens = torch.stack([token_cache[t] for t in texts])
        n_real = len(img)
        if blends and world == "shapes":  # negatives only: they join the text->image softmax, not image->text
            blend_img, recoloured, _ = blend_twins(scenes, img, masks, g)
            img = torch.cat([img, blend_img])  # true of a blend: true of both its ends
            truth = torch.cat([truth, truth * _truth(specs, recoloured)])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            img_f = F.normalize(model.encode_image(augment(img, g)).float(), dim=-1)
            txt_f = F.normalize(model.encode_text(tokens).float(), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img_f @ txt_f.T
        real, real_truth = logits[:n_real], truth[:n_real]
        loss_i = -(real_truth / real_truth.sum(1, keepdim=True) * real.log_softmax(1)
                   ).sum(1).mean()
        loss_t = -(truth / truth.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step
        if reporter is not None:
            loss_value = float(loss.detach())
            reporter.update(step, steps, loss=loss_value)
        steps = budget.fit(steps, step)
        if budget.out_of_time() or (stop_at is not None and step >= stop_at):
            break
    loss_value = float(loss.detach())
    model.train(False)
    if world == "faces":
        from .faces.clip_data import zero_shot_accuracy as faces_zero_shot

        acc = faces_zero_shot(model, tokenizer)
    else:
        acc = zero_shot_accuracy(model, tokenizer, n=report_renders)
    report = {"world": world, "steps": done, "planned_steps": steps, "batch": batch, "seed": seed, "lr": lr,
              "continued_from": None if init_from is None else str(init_from),
              "blend_twins": blends, "focus": list(focus), "final_loss": loss_value, "zero_shot": acc,
              "wall_seconds": round(time.perf_counter() - t0), "device": device}
    save_clip_folder(model.to("cpu"), out_dir, report, world_vocabulary(world))
    return report


def warmup_cosine(lr: float, step: int, steps: int, warmup: float = 0.05) -> float:
    """Linear warm-up over the first ``warmup`` share of steps, then cosine decay to 2 %."""
    w = max(1, int(warmup * steps))
    if step <= w:
        return lr * step / w
    t = (step - w) / max(1, steps - w)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class StepBudget:
    """With a time budget, shortens a planned schedule once so that it ends inside the budget.

    The speed is measured between steps 20 and 120 (so CUDA start-up and autotuning do not
    count); the report records the steps actually used, which reproduce the run without a
    budget.
    """

    def __init__(self, max_minutes: float | None) -> None:
        self.budget = None if max_minutes is None else 60 * max_minutes
        self.t0 = time.perf_counter()
        self.t20: float | None = None

    def fit(self, steps: int, step: int) -> int:
        if self.budget is None:
            return steps
        now = time.perf_counter() - self.t0
        if step == 20:
            self.t20 = now
        if step == 120 and self.t20 is not None:
            per_step = (now - self.t20) / 100
            return max(step, min(steps, step + int((self.budget - now) / per_step)))
        return steps

    def out_of_time(self) -> bool:
        return self.budget is not None and time.perf_counter() - self.t0 > self.budget


def _truth(specs: list[CaptionSpec], scenes: SceneBatch) -> torch.Tensor:
    """truth[i, j] = caption j is true of image i (vectorised ``CaptionSpec.true_of``)."""
    dev = scenes.background.device

    def idx(names: tuple[str, ...], values: list[str | None]) -> torch.Tensor:
        return torch.tensor([-1 if v is None else names.index(v) for v in values], device=dev)

    bg = idx(COLOUR_NAMES, [s.background for s in specs])
    c1 = idx(COLOUR_NAMES, [s.colour for s in specs])
    s1 = idx(SHAPES, [s.shape for s in specs])
    c2 = idx(COLOUR_NAMES, [s.second[0] if s.second else None for s in specs])
    s2 = idx(SHAPES, [s.second[1] if s.second else None for s in specs])

    def has(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        match = scenes.present[:, :, None] & \
            ((c[None, None] < 0) | (scenes.colour[:, :, None] == c[None, None])) & \
            ((s[None, None] < 0) | (scenes.shape[:, :, None] == s[None, None]))
        return match.any(1)  # [B, n_specs]

    ok = (bg[None] < 0) | (scenes.background[:, None] == bg[None])
    ok = ok & (((c1 < 0) & (s1 < 0))[None] | has(c1, s1))
    ok = ok & (((c2 < 0) & (s2 < 0))[None] | has(c2, s2))
    return ok.float()


def world_vocabulary(world: str) -> list[str]:
    """Every word the world's captions hold: what its CLIP was trained on."""
    if world == "faces":
        from .faces.captions import vocabulary as faces_vocabulary

        return faces_vocabulary()
    from .captions import vocabulary

    return vocabulary()


def save_clip_folder(model: torch.nn.Module, out_dir: Path, report: dict[str, Any],
                     vocabulary: list[str]) -> None:
    """An open_clip local-dir folder, its config listing the words the CLIP was trained on
    (``coral_vocabulary``: a prompt of words it never read is refused, fit.unread_words)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": DEMO_CLIP_CFG, "preprocess_cfg": PREPROCESS_CFG,
           "coral_vocabulary": vocabulary}
    write_text_atomic(out_dir / "open_clip_config.json", json.dumps(cfg, indent=2))
    tensors = {k: v.detach().to(torch.float16).contiguous()
               for k, v in model.state_dict().items()}
    with atomic_path(out_dir / "open_clip_model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"trained_on": "coral demo world v2"})
    write_text_atomic(out_dir / "training_report.json", json.dumps(report, indent=2))


def _text_embeddings(model: Any, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    device = next(model.parameters()).device
    return F.normalize(model.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(model: Any, tokenizer: Any, n: int = 1000, seed: int = 987654
                       ) -> dict[str, float]:
    """Per-attribute zero-shot accuracy on held-out renders (a seed range never trained on),
    and binding accuracy.

    Object colour and shape are scored on one-object scenes (unambiguous), background on all.
    Binding, background: for "a X background", the render with background X and object Y must
    score above its twin with background Y and object X. Binding, two objects: "a red circle and
    a blue square" must score above "a blue circle and a red square" on a scene that has the
    former (scenes whose two objects differ in colour and shape).
    """
    device = next(model.parameters()).device
    scenes = random_scenes(n, seed, device)
    img, masks = render(scenes)
    emb = _encode_images(model, img)
    single = ~scenes.present[:, 1]
    truth = {"object colour": scenes.colour[:, 0], "object shape": scenes.shape[:, 0],
             "background colour": scenes.background}
    out = {}
    for attr, prompts in ATTRIBUTE_PROMPTS.items():
        pred = (emb @ _text_embeddings(model, tokenizer, prompts).T).argmax(1)
        keep = single if attr.startswith("object") else torch.ones_like(single)
        out[attr] = float((pred[keep] == truth[attr][keep]).float().mean())
    out.update(binding_accuracy(model, tokenizer, scenes, emb))
    out.update(blend_accuracy(model, tokenizer, scenes, img, masks, emb))
    return out


@torch.no_grad()
def blend_accuracy(model: Any, tokenizer: Any, scenes: SceneBatch, img: torch.Tensor,
                   masks: torch.Tensor, emb: torch.Tensor, t: float = 0.3) -> dict[str, float]:
    """How often the caption of a region's colour ("a red circle", "a cyan background") scores
    the pure render above the same scene with that region 30 % of the way to another colour:
    an edit climbs this score, so where a blend wins the edit can stop part-way."""
    blend, _, region = blend_twins(scenes, img, masks, torch.Generator().manual_seed(7), t)
    blend_emb = _encode_images(model, blend)
    specs = [CaptionSpec(background=COLOUR_NAMES[int(scenes.background[i])]) if r == 0 else
             CaptionSpec(COLOUR_NAMES[int(scenes.colour[i, r - 1])],
                         SHAPES[int(scenes.shape[i, r - 1])])
             for i, r in enumerate(region.tolist())]
    txt = _text_embeddings(model, tokenizer, [spec.text() for spec in specs])
    wins = (emb * txt).sum(1) > (blend_emb * txt).sum(1)
    on_bg = region == 0
    return {"pure over blend, background": float(wins[on_bg].float().mean()),
            "pure over blend, object": float(wins[~on_bg].float().mean())}


@torch.no_grad()
def binding_accuracy(model: Any, tokenizer: Any, scenes: SceneBatch, emb: torch.Tensor
                     ) -> dict[str, float]:
    twin_img, _ = render(swap_background_and_object(scenes))
    twin_emb = _encode_images(model, twin_img)
    bg_txt = _text_embeddings(model, tokenizer,
                              [with_article(f"{c} background") for c in COLOUR_NAMES])
    own = bg_txt[scenes.background]
    bg_bind = float(((emb * own).sum(1) > (twin_emb * own).sum(1)).float().mean())

    two = scenes.present[:, 1] & (scenes.colour[:, 0] != scenes.colour[:, 1]) & \
        (scenes.shape[:, 0] != scenes.shape[:, 1])
    idx = two.nonzero().flatten().tolist()
    wins = 0
    if idx:
        right, swapped = [], []
        for i in idx:
            c0, c1 = (COLOUR_NAMES[int(c)] for c in scenes.colour[i])
            s0, s1 = (SHAPES[int(s)] for s in scenes.shape[i])
            right.append(CaptionSpec(c0, s0, second=(c1, s1)).text())
            swapped.append(CaptionSpec(c1, s0, second=(c0, s1)).text())
        a = (emb[idx] * _text_embeddings(model, tokenizer, right)).sum(1)
        b = (emb[idx] * _text_embeddings(model, tokenizer, swapped)).sum(1)
        wins = int((a > b).sum())
    return {"binding background": bg_bind,
            "binding two objects": wins / max(1, len(idx))}


def _encode_images(model: Any, img: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PREPROCESS_CFG["mean"], device=img.device).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESS_CFG["std"], device=img.device).view(1, 3, 1, 1)
    x = ((img + 1) / 2 - mean) / std
    return F.normalize(torch.cat([model.encode_image(c).float() for c in x.split(256)]), dim=-1)


__all__ = ["train_clip", "zero_shot_accuracy", "binding_accuracy", "blend_accuracy",
           "blend_twins", "DEMO_CLIP_CFG"]
