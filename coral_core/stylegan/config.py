"""Hyper-parameters that fully determine a StyleGAN2 generator's structure and numerics."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

ARCHITECTURES = ("skip", "orig", "resnet")
LIMIT_DIM = 8192  # z/w dims and channels; the largest published StyleGAN2s use 512-1024


@dataclass(frozen=True)
class GeneratorConfig:
    """NVlabs-style configuration; every field maps to an NVlabs ``init_kwargs`` entry.

    Kept separate from the module so loaders can build it from whatever a file records (NVlabs
    attributes, rosinality tensor shapes, our safetensors metadata) and validate it before any
    weights are allocated.
    """

    img_resolution: int
    z_dim: int = 512
    w_dim: int = 512
    img_channels: int = 3
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    architecture: str = "skip"
    use_noise: bool = True

    def __post_init__(self) -> None:
        res = self.img_resolution
        if not isinstance(res, int) or res < 4 or res > 4096 or res & (res - 1):
            raise ValueError(f"img_resolution must be a power of two in 4..4096, got {res}")
        # Refused before anything is allocated: a crafted file can declare z_dim = 1e12.
        for name, low, high in (("z_dim", 1, LIMIT_DIM), ("w_dim", 1, LIMIT_DIM),
                                ("img_channels", 1, 4), ("mapping_layers", 1, 32),
                                ("channel_base", 1, 2 ** 20), ("channel_max", 1, LIMIT_DIM)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
        for name in ("mapping_lr_multiplier", "w_avg_beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.conv_clamp is not None and (not isinstance(self.conv_clamp, (int, float)) or
                                            not math.isfinite(self.conv_clamp) or
                                            self.conv_clamp <= 0):
            raise ValueError(f"conv_clamp must be None or a finite number > 0, "
                             f"got {self.conv_clamp!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.mapping_layers < 1:
            raise ValueError(f"mapping_layers must be >= 1, got {self.mapping_layers}")

    @property
    def resolution_log2(self) -> int:
        return self.img_resolution.bit_length() - 1

    @property
    def block_resolutions(self) -> list[int]:
        return [2 ** i for i in range(2, self.resolution_log2 + 1)]

    def channels_at(self, resolution: int) -> int:
        return min(self.channel_base // resolution, self.channel_max)

    def weight_count_lower_bound(self) -> int:
        """Weights the config implies (conv kernels and mapping layers, the bulk of any
        generator), computed without building it: loaders compare it with what a file holds."""
        total = self.z_dim * self.w_dim + (self.mapping_layers - 1) * self.w_dim ** 2
        for res in self.block_resolutions:
            out_ch = self.channels_at(res)
            in_ch = self.channels_at(res // 2) if res > 4 else 0
            total += out_ch * out_ch * 9 + (in_ch * out_ch * 9 if in_ch else 0)
        return total

    @property
    def num_ws(self) -> int:
        return 2 * self.resolution_log2 - 2

    @property
    def num_conv_layers(self) -> int:
        return self.num_ws - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown generator config keys: {sorted(unknown)}")
        return cls(**data)
