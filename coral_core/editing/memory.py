"""Memory options of a training run: activation recomputation and bf16 autocast, chosen
automatically from the generator's size and the device unless the config says otherwise."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from ..stylegan import Generator
from .config import TrainConfig


@dataclass(frozen=True)
class MemoryPlan:
    """What a run uses: ``recompute`` (activations recomputed in the backward pass) and
    ``bf16`` (CUDA autocast); ``autocast()`` is the context every forward pass runs in."""
    recompute: bool
    bf16: bool

    def autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 \
            else contextlib.nullcontext()

    def as_info(self) -> dict[str, bool]:
        return {"recompute_activations": self.recompute, "bf16": self.bf16}


def memory_plan(cfg: TrainConfig, G: Generator, device: torch.device) -> MemoryPlan:
    """The config's choices, or the automatic ones where it leaves them as None."""
    recompute = cfg.recompute if cfg.recompute is not None else auto_recompute(G, device)
    bf16 = (cfg.bf16 if cfg.bf16 is not None else auto_bf16(G, device)) and \
        device.type == "cuda"
    return MemoryPlan(recompute=recompute, bf16=bf16)


def describe_memory_options(options: dict[str, bool]) -> str:
    """One line for the CLI and the benchmark: which memory options a run used."""
    return ", ".join(f"{name} {'on' if used else 'off'}" for name, used in options.items())


def auto_recompute(G: Generator, device: torch.device) -> bool:
    """Recompute activations where the blended pass's activations dominate a step's memory.

    CPU, 256 px and up: measured there (config-f 256 px, SS per image, batch 4) peak RSS 9.6 ->
    6.0 GiB and 27.7 -> 23.6 s/step (allocation costs more than the recomputation). CUDA: at 512
    px and up when less than 16 GiB is free (not yet measured: no GPU has been lent)."""
    if device.type == "cpu":
        return G.img_resolution >= 256
    return _cuda_memory_is_tight(G, device)


def auto_bf16(G: Generator, device: torch.device) -> bool:
    """bf16 autocast where memory is tight: CUDA, 512 px and up, less than 16 GiB free (the
    8 GB-card goal at 1024 px). Off on the CPU (no memory gain there measured). Not yet
    measured on a GPU: none has been lent."""
    return _cuda_memory_is_tight(G, device)


def _cuda_memory_is_tight(G: Generator, device: torch.device) -> bool:
    if device.type != "cuda" or G.img_resolution < 512:
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return free < 16 * 2**30


# Renders done without gradients (the sample bank, applying edits to many latents) take
# chunks of about this much activation memory at a time.
CHUNK_MEMORY_BYTES = 1 << 30


def images_per_chunk(G: Generator, passes: int = 1, budget: int = CHUNK_MEMORY_BYTES) -> int:
    """Images to render at once without gradients within ``budget``: estimated from the widest
    layer (its activations and per-sample modulated weights, with room for a few temporaries)
    times the ``passes`` held at once (apply: the original and the blend's two branches), at
    most 64 (per-call overhead dominates small generators: 16 at a time took 26 s for a 32-px
    test model's sample bank, 64 took 5 s; 64 at a time of a 256-px config-f model took a
    12.5 GB peak)."""
    per_image = 0
    for layer in G.conv_layers:
        activations = layer.out_channels * layer.resolution ** 2 * 4
        weights = layer.in_channels * layer.out_channels * 9 * 4
        per_image = max(per_image, 6 * activations + 2 * weights)
    return int(max(1, min(64, budget // max(per_image * passes, 1))))

