"""A CLIP-retrieval prior for the global direction: where to start the W+ offset.

Why (a departure from the paper, which starts the direction at ~0; measured on the demo world):
the edits that failed with the right region chosen were mostly *stuck*, not misjudged. A
recolour between far-apart colours (cyan -> orange, yellow -> blue backgrounds) needs a long
move through W+ that passes other colours on the way, so from d ~ 0 the CLIP gradient found no
path (plain CLIP loss still 0.84-0.95 at the end, where successful edits reach ~0.5). And the
region contest gives every region the same short budget, so a slow region (a background) lost
to one that tints at once (an object) even when the prompt named the background.

The prior is the difference between the mean w of the generator's samples that the CLIP ranks
highest for the prompt and the mean w of all samples: a direction that already points towards
pictures of the prompt, as the generator draws them. It only sets where optimisation starts;
the masks still decide where the change lands, and the CLIP, L2 and area terms still shape it.

The samples' w and CLIP image embeddings (a "sample bank") are computed once per generator and
CLIP and cached on disk beside the segment catalogues, so a prompt's prior costs one text
encoding and a top-k.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_path
from ..clip_model import CoralClip
from ..stylegan import Generator
from .catalogue import default_cache_dir
from .config import PRIOR_FORMS
from .memory import images_per_chunk

BANK_SEED = 20231204  # fixed: the same generator and CLIP always give the same prior


@dataclass
class SampleBank:
    """w of seeded generator samples [N, w_dim] and their CLIP image embeddings [N, D]."""

    ws: torch.Tensor
    embeddings: torch.Tensor
    generator_fingerprint: str
    clip_fingerprint: str

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            save_file({"ws": self.ws.contiguous().cpu(),
                       "embeddings": self.embeddings.contiguous().cpu()}, str(tmp),
                      metadata={"generator": self.generator_fingerprint,
                                "clip": self.clip_fingerprint})

    @classmethod
    def load(cls, path: Path) -> "SampleBank":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return cls(f.get_tensor("ws"), f.get_tensor("embeddings"),
                       meta.get("generator", ""), meta.get("clip", ""))


# A bank's file name ends so: embeddings of the pictures as displayed (clip_model.displayed).
# A bank of raw readings, cached before session 21, ends otherwise and is never read.
BANK_SUFFIX = "-shown.safetensors"

BankProgress = Callable[[int, int], None]  # (samples done, samples in all); may raise to cancel


@torch.no_grad()
def build_sample_bank(G: Generator, clip: CoralClip, samples: int,
                      progress: BankProgress | None = None) -> SampleBank:
    """Draw ``samples`` seeded latents (no truncation: the generator's own distribution),
    render them and embed them with the CLIP. ``progress`` is called before every chunk with
    (done, total) and may raise to cancel.

    Rendered at full size, on purpose: a skip generator's image at a coarser block (the sum
    of its toRGB outputs so far) would cost a fraction, but on both demo generators it is no
    picture of the output (13-18 dB from the downsampled image, even colour-corrected), and a
    prior read from such previews pointed elsewhere (cosine -0.46 to 0.99 with the full
    bank's); see docs/history.md, session 13."""
    g = torch.Generator().manual_seed(BANK_SEED)
    z = torch.randn(samples, G.z_dim, generator=g)
    ws, embs = [], []
    done = 0
    for chunk in z.split(images_per_chunk(G)):
        if progress is not None:
            progress(done, samples)
        w_plus = G.mapping_ws(chunk)
        img = G.synthesize(w_plus, noise=G.make_noise(w_plus.shape[0], "const"))
        ws.append(w_plus[:, 0].float().cpu())
        embs.append(clip.encode_image(img).float().cpu())
        done += chunk.shape[0]
    if progress is not None:
        progress(done, samples)
    return SampleBank(torch.cat(ws), torch.cat(embs), G.fingerprint(), clip.fingerprint())


def bank_path(G: Generator, clip: CoralClip, samples: int, cache_dir: Path | None = None
              ) -> Path:
    """Where this generator's and CLIP's bank of ``samples`` is cached."""
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    key = f"bank-{G.fingerprint()}-{clip.fingerprint()}-N{samples}{BANK_SUFFIX}"
    return Path(cache_dir) / key


def sample_bank_for(G: Generator, clip: CoralClip, samples: int,
                    cache_dir: Path | None = None,
                    progress: BankProgress | None = None) -> SampleBank:
    """The cached bank for this generator and CLIP, or build (and cache) it."""
    path = bank_path(G, clip, samples, cache_dir)
    cached = _load_if_valid(path, G, clip, samples)
    if cached is not None:
        return cached
    bank = build_sample_bank(G, clip, samples, progress)
    try:
        bank.save(path)
    except OSError:
        pass  # a read-only cache only costs a rebuild next time
    return bank


def _load_if_valid(path: Path, G: Generator, clip: CoralClip, samples: int
                   ) -> SampleBank | None:
    """The cached bank at ``path`` if it is this generator's and CLIP's; None if it is
    missing, another pair's, or unreadable (a corrupt cache entry only costs a rebuild)."""
    if not path.is_file():
        return None
    try:
        bank = SampleBank.load(path)
    except Exception:  # noqa: BLE001 - any unreadable file: rebuild instead
        return None
    if (bank.generator_fingerprint == G.fingerprint()
            and bank.clip_fingerprint == clip.fingerprint()
            and bank.ws.shape == (samples, G.w_dim)):
        return bank
    return None


def retrieval_prior(bank: SampleBank, text_embedding: torch.Tensor, top: int, form: str
                    ) -> torch.Tensor:
    """The prior's offset [w_dim], in the generator's own w units.

    ``"mean"``: the mean w of the ``top`` samples the CLIP ranks highest for the text, minus
    the mean w of all samples. The best pictures of a prompt differ from the average picture
    in more than the prompt (on the face world the CLIP's best "a smiling face" samples are
    rarely bald or on blue; its best "a face with glasses" rarely have brown eyes), and
    that direction carries all of it into the edit.

    ``"matched"``: each best sample against its partner, the sample the CLIP sees
    as most alike in everything but the prompt (cosine of the embeddings with their
    component along the text removed) among those that score in the lower half for the
    prompt; the mean of those differences. The pairs share what the prompt does not name,
    so their difference is mostly the prompt's own change. The lower half, because the text
    direction holds only part of what the CLIP sees of the prompt: a partner chosen anywhere
    outside the best often still shows it (a smiling partner for a smiling face) and the
    difference then lacks the change itself (measured: docs/history.md, session 27). With
    no low scorer outside the best (``top`` half the bank or more), the mean form.

    The trainer (TrainConfig.prior_form None) holds a direction to the matched form and
    starts a free one from the mean form (a start that reaches; training shapes the rest)."""
    if form not in PRIOR_FORMS:
        raise ValueError(f"prior form {form!r}: expected one of {PRIOR_FORMS}")
    text = text_embedding.reshape(-1).float().cpu()
    embeddings = bank.embeddings.float()
    scores = embeddings @ text
    best = scores.topk(min(top, scores.shape[0])).indices
    low = scores <= scores.median()
    low[best] = False
    if form == "mean" or not bool(low.any()):  # no low scorer left: the best are half or more
        return bank.ws[best].mean(0) - bank.ws.mean(0)
    unit = text / text.norm().clamp_min(1e-12)
    rest_of_it = embeddings - (embeddings @ unit)[:, None] * unit[None]  # all but the prompt
    rest_of_it = rest_of_it / rest_of_it.norm(dim=1, keepdim=True).clamp_min(1e-12)
    candidates = low.nonzero()[:, 0]
    partner = candidates[(rest_of_it[best] @ rest_of_it[candidates].T).argmax(1)]
    return (bank.ws[best] - bank.ws[partner]).mean(0)
