"""The custom socket types passed between the pack's nodes (never modified in place)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Prefixed: another pack (ComfyUI-StyleGan) uses the bare names for other objects, and a link
# between the two validated, then failed at run time.
STYLEGAN_MODEL = "CORAL_STYLEGAN_MODEL"
CORAL_CLIP = "CORAL_CLIP"
STYLEGAN_LATENT = "CORAL_STYLEGAN_LATENT"
CORAL_EDIT = "CORAL_EDIT"


@dataclass(frozen=True)
class StyleGANModel:
    path: Path
    loaded: Any           # coral_core.formats.LoadedGenerator
    resident: Any         # host.ResidentModel

    def generator(self) -> Any:
        """The generator, loaded onto ComfyUI's device if ComfyUI had offloaded it."""
        return self.resident.ready()


@dataclass(frozen=True)
class ClipModel:
    path: Path
    clip: Any             # coral_core.clip_model.CoralClip
    resident: Any

    def ready(self) -> Any:
        self.resident.ready()
        return self.clip


@dataclass(frozen=True)
class Latents:
    """W+ codes on the CPU [B, num_ws, w_dim] and the generator they belong to."""

    ws: torch.Tensor
    fingerprint: str
    labels: tuple[str, ...] = field(default=())

    def on(self, device: torch.device) -> torch.Tensor:
        return self.ws.to(device)
