"""What the world-agnostic training code needs to know about a demo world.

Both worlds (coloured shapes, portraits) train their generator the same way: a fixed scene per
z (discrete choices are step functions of the normalised z, a few continuous parameters are
linear in it), rendered and reconstructed. A ``WorldSpec`` names those pieces so the generator
trainer, the check and the evaluation serve either world without world-specific numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..stylegan import GeneratorConfig


@dataclass(frozen=True)
class WorldSpec:
    name: str
    resolution: int
    #: (z dim, number of choices) for every discrete choice (thresholds at the normal quantiles)
    discrete_dims: tuple[tuple[int, int], ...]
    #: z dims read linearly (lighting, head size ...)
    continuous_dims: tuple[int, ...]
    scenes_from_z: Callable[[torch.Tensor], Any]
    render: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    generator_cfg: GeneratorConfig


def _shapes() -> WorldSpec:
    from .render import render
    from .scene import DEMO_RESOLUTION, DISCRETE_DIMS, GRADIENT_DIM, scenes_from_z

    return WorldSpec("shapes", DEMO_RESOLUTION, DISCRETE_DIMS, (GRADIENT_DIM,), scenes_from_z,
                     render, _generator_cfg(DEMO_RESOLUTION))


def _faces() -> WorldSpec:
    from .faces.render import render
    from .faces.scene import CONTINUOUS, DISCRETE_DIMS, RESOLUTION, faces_from_z

    return WorldSpec("faces", RESOLUTION, DISCRETE_DIMS, tuple(d for d, _ in CONTINUOUS),
                     faces_from_z, render, _generator_cfg(RESOLUTION))


def _generator_cfg(resolution: int) -> GeneratorConfig:
    # channel_base 2048 (64-px layers at 32 channels): measured 0.20 s per batch-16 training
    # step on 2 CPU cores against 0.32 s for 4096, and 4x cheaper fine layers for every edit.
    return GeneratorConfig(img_resolution=resolution, z_dim=32, w_dim=128, mapping_layers=4,
                           mapping_lr_multiplier=1.0, channel_base=2048, channel_max=128,
                           conv_clamp=256.0)


WORLDS = {"shapes": _shapes, "faces": _faces}


def get_world(name: str) -> WorldSpec:
    if name not in WORLDS:
        from ..errors import InputError

        raise InputError(f"--world: unknown world {name!r}; choose from {', '.join(WORLDS)}")
    return WORLDS[name]()
