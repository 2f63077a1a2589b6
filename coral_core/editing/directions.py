"""Direction forms: a global W+ offset, or an image-specific offset from a latent mapper."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GlobalDirection(nn.Module):
    """One learnable offset per W+ entry (rows = 1 per prompt, or one per image).

    The parameter ``delta`` is in units of the generator's w spread (``Generator.w_spread``):
    the W+ offset is ``delta * scale``. One L2 weight and learning rate then mean the same on
    any generator (v1 measured: a raw-unit L2 tuned for FFHQ held the demo generator's offsets
    near norm 5 where it needed 35). Initialised tiny but non-zero: with d = 0 exactly the
    masks' gradient is exactly 0.
    """

    scale: torch.Tensor

    def __init__(self, num_ws: int, w_dim: int, rows: int = 1, init_std: float = 0.01,
                 seed: int = 0, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.delta = nn.Parameter(torch.randn(rows, num_ws, w_dim, generator=g) * init_std)
        self.register_buffer("scale", torch.ones(w_dim) if scale is None
                             else scale.detach().to(torch.float32).clone())
        # A unit direction in ``delta``'s units that the rows marked in ``held`` must stay
        # along (one gain per W+ entry), or None: every row is free. The trainer sets it from
        # the direction prior (config ``along_prior``); it is not saved, since the saved
        # offsets already lie along it.
        self.axis: torch.Tensor | None = None
        self.held: torch.Tensor | None = None  # [rows] bool

    def hold_to_axis(self) -> None:
        """Project the held rows' offsets onto ``axis`` (after every optimiser step: a
        projected gradient descent, so the optimiser may only scale the prior per entry)."""
        if self.axis is None or self.held is None or not bool(self.held.any()):
            return
        with torch.no_grad():
            on_axis = (self.delta @ self.axis)[..., None] * self.axis
            self.delta[self.held] = on_axis[self.held]

    def hold_like(self, other: "GlobalDirection") -> None:
        """Share ``other``'s axis and held rows (a copy trained apart, as the region contest's
        rivals)."""
        self.axis, self.held = other.axis, other.held

    def offset(self) -> torch.Tensor:
        """The W+ offset in the generator's own units [rows, num_ws, w_dim]."""
        return self.delta * self.scale

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        d = self.offset()
        return d.expand(ws.shape[0], -1, -1) if d.shape[0] == 1 else d

    def l2(self) -> torch.Tensor:
        return self.delta.square().sum() / self.delta.shape[0]


class BiEqual(nn.Module):
    """BiEqual(x) = LReLU(MLP_a(x)) - LReLU(MLP_b(x)), the unit of CoralStyleCLIP's mapper."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a = nn.Linear(dim, dim)
        self.b = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.a(x), 0.2) - F.leaky_relu(self.b(x), 0.2)


class MapperBlock(nn.Module):
    def __init__(self, dim: int, units: int = 4) -> None:
        super().__init__()
        self.units = nn.Sequential(*[BiEqual(dim) for _ in range(units)])
        self.out = nn.Linear(dim, dim)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        x = w * (w.square().mean(-1, keepdim=True) + 1e-8).rsqrt()  # pixel norm, as StyleCLIP
        return self.out(self.units(x))


def mapper_groups(num_ws: int) -> list[tuple[int, int]]:
    """StyleCLIP's coarse [0:4], medium [4:8], fine [8:] split, clipped to num_ws."""
    bounds = [(0, 4), (4, 8), (8, num_ws)]
    return [(a, min(b, num_ws)) for a, b in bounds if a < min(b, num_ws)]


class LatentMapper(nn.Module):
    """Image-specific d = 0.1 * g(w), one BiEqual network per W+ group."""

    spread: torch.Tensor

    def __init__(self, num_ws: int, w_dim: int, scale: float = 0.1,
                 spread: torch.Tensor | None = None) -> None:
        super().__init__()
        self.groups = mapper_groups(num_ws)
        blocks = [MapperBlock(w_dim) for _ in self.groups]
        self.blocks = nn.ModuleList(blocks)
        self.scale = scale
        # Output in units of the generator's w spread, as for GlobalDirection.
        self.register_buffer("spread", torch.ones(w_dim) if spread is None
                             else spread.detach().to(torch.float32).clone())
        for block in blocks:  # start near d = 0 but not exactly (masks need a gradient)
            nn.init.normal_(block.out.weight, std=1e-3)
            nn.init.zeros_(block.out.bias)

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        parts = [block(ws[:, a:b]) for (a, b), block in zip(self.groups, self.blocks)]
        return torch.cat(parts, 1) * self.scale * self.spread

    def l2(self, delta: torch.Tensor) -> torch.Tensor:
        return (delta / self.spread).square().mean()
