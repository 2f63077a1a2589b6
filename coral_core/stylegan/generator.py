"""The StyleGAN2 generator, with the layer structure the CORAL editing engine steps through.

Synthesis is written as a walk over blocks that delegates every conv layer and every toRGB to a
*runner*. The plain runner just applies the layer; the CORAL blend (``coral_core.editing``)
supplies a runner that computes an original and an edited branch and mixes them by a mask. One
walk, so the generator's numerics and the blend can never drift apart.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn

from .config import GeneratorConfig
from .layers import MappingNetwork, SynthesisBlock, SynthesisLayer, ToRGBLayer

NOISE_MODES = ("const", "random", "none")


@dataclass(frozen=True)
class ConvLayerInfo:
    """One synthesis conv layer, numbered l = 1..L as in the CoralStyleCLIP paper."""

    index: int
    name: str
    resolution: int
    in_channels: int
    out_channels: int
    w_index: int


@dataclass(frozen=True)
class ToRGBInfo:
    """One toRGB layer; ``reads_layer`` is the conv layer whose output (and mask) it uses."""

    name: str
    resolution: int
    w_index: int
    reads_layer: int


class LayerRunner(Protocol):
    """How the synthesis walk evaluates each layer (plain, feature-capturing, or blended)."""

    def conv(self, info: ConvLayerInfo, layer: SynthesisLayer, x: torch.Tensor,
             gain: float) -> torch.Tensor: ...

    def torgb(self, info: ToRGBInfo, layer: ToRGBLayer, x: torch.Tensor) -> torch.Tensor: ...


class _StopSynthesis(Exception):
    """Raised by a runner to end the walk early (only the features were wanted)."""


class PlainRunner:
    """Applies each layer to one W+ code with fixed noise; optionally keeps every feature map
    and stops after layer ``stop_after``."""

    def __init__(self, ws: torch.Tensor, noise: Sequence[torch.Tensor | None],
                 capture: bool = False, stop_after: int | None = None) -> None:
        self.ws, self.noise, self.capture = ws, noise, capture
        self.stop_after = stop_after
        self.features: list[torch.Tensor] = []

    def conv(self, info: ConvLayerInfo, layer: SynthesisLayer, x: torch.Tensor,
             gain: float) -> torch.Tensor:
        y = layer(x, self.ws[:, info.w_index], self.noise[info.index - 1], gain)
        if self.capture:
            self.features.append(y)
        if self.stop_after is not None and info.index >= self.stop_after:
            raise _StopSynthesis
        return y

    def torgb(self, info: ToRGBInfo, layer: ToRGBLayer, x: torch.Tensor) -> torch.Tensor:
        return layer(x, self.ws[:, info.w_index])


class SynthesisNetwork(nn.Module):
    """W+ -> image; blocks are named ``b4``, ``b8``, ... as in NVlabs."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_ws = cfg.num_ws
        self.conv_infos: list[ConvLayerInfo] = []
        self.torgb_infos: list[ToRGBInfo] = []
        w_index = 0
        for res in cfg.block_resolutions:
            in_ch = cfg.channels_at(res // 2) if res > 4 else 0
            out_ch = cfg.channels_at(res)
            block = SynthesisBlock(in_ch, out_ch, cfg.w_dim, res, cfg.img_channels,
                                   is_last=res == cfg.img_resolution,
                                   architecture=cfg.architecture, use_noise=cfg.use_noise,
                                   conv_clamp=cfg.conv_clamp)
            setattr(self, f"b{res}", block)
            names = ["conv1"] if in_ch == 0 else ["conv0", "conv1"]
            for name, layer in zip(names, block.conv_layers()):
                self.conv_infos.append(ConvLayerInfo(
                    index=len(self.conv_infos) + 1, name=f"b{res}.{name}", resolution=res,
                    in_channels=layer.in_channels, out_channels=layer.out_channels,
                    w_index=w_index))
                w_index += 1
            if block.num_torgb:
                self.torgb_infos.append(ToRGBInfo(
                    name=f"b{res}.torgb", resolution=res, w_index=w_index,
                    reads_layer=self.conv_infos[-1].index))

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{r}") for r in self.cfg.block_resolutions]

    def run(self, batch: int, runner: LayerRunner) -> torch.Tensor:
        """Walk every block; the runner decides how each layer is evaluated."""
        x: torch.Tensor | None = None
        img: torch.Tensor | None = None
        infos = iter(self.conv_infos)
        rgb_infos = iter(self.torgb_infos)
        resnet = self.cfg.architecture == "resnet"
        for block in self.blocks():
            if block.in_channels == 0:
                x = block.const.to(torch.float32)[None].expand(batch, -1, -1, -1)
                x = runner.conv(next(infos), block.conv1, x, 1.0)
            else:
                assert x is not None
                skip = block.skip(x) if resnet else None
                x = runner.conv(next(infos), block.conv0, x, 1.0)
                x = runner.conv(next(infos), block.conv1, x, math.sqrt(0.5) if resnet else 1.0)
                if skip is not None:
                    x = skip + x
            if img is not None:
                img = block.upsample_image(img)
            if block.num_torgb:
                y = runner.torgb(next(rgb_infos), block.torgb, x)
                img = y if img is None else img + y
        assert img is not None
        return img


class Generator(nn.Module):
    """StyleGAN2 generator (mapping + synthesis) with NVlabs parameter names and numerics."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.synthesis = SynthesisNetwork(cfg)
        self.mapping = MappingNetwork(cfg.z_dim, cfg.w_dim, cfg.num_ws, cfg.mapping_layers,
                                      cfg.mapping_lr_multiplier, cfg.w_avg_beta)
        self._fingerprint: str | None = None

    # ---- structure the editing engine needs -------------------------------------------------
    @property
    def num_ws(self) -> int:
        return self.cfg.num_ws

    @property
    def z_dim(self) -> int:
        return self.cfg.z_dim

    @property
    def w_dim(self) -> int:
        return self.cfg.w_dim

    @property
    def img_resolution(self) -> int:
        return self.cfg.img_resolution

    @property
    def conv_layers(self) -> list[ConvLayerInfo]:
        return self.synthesis.conv_infos

    @property
    def torgb_layers(self) -> list[ToRGBInfo]:
        return self.synthesis.torgb_infos

    def conv_modules(self) -> list[SynthesisLayer]:
        return [m for b in self.synthesis.blocks() for m in b.conv_layers()]

    # ---- latents ----------------------------------------------------------------------------
    def z_from_seeds(self, seeds: Sequence[int]) -> torch.Tensor:
        """z exactly as NVIDIA's generate.py draws it, so seed N is the same image there."""
        rows = [np.random.RandomState(int(s)).randn(1, self.z_dim) for s in seeds]
        return torch.from_numpy(np.concatenate(rows, 0)).to(torch.float32)

    def mapping_ws(self, z: torch.Tensor, truncation_psi: float = 1.0,
                   truncation_cutoff: int | None = None) -> torch.Tensor:
        from ..validate import finite

        finite("truncation", truncation_psi, -2.0, 2.0)
        return self.mapping(z.to(self.w_avg.device), truncation_psi, truncation_cutoff)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    # ---- synthesis --------------------------------------------------------------------------
    def make_noise(self, batch: int, mode: str = "const",
                   generator: torch.Generator | None = None) -> list[torch.Tensor | None]:
        """One noise tensor per conv layer, to be held fixed across branches or steps."""
        if mode not in NOISE_MODES:
            raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")
        device = self.w_avg.device
        return [m.make_noise(batch, mode, device, generator) for m in self.conv_modules()]

    def check_ws(self, ws: torch.Tensor) -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(
                f"W+ latents must have shape [B, {self.num_ws}, {self.w_dim}] for this "
                f"generator, got {list(ws.shape)}")
        return ws.to(torch.float32)

    def synthesize(self, ws: torch.Tensor, noise_mode: str = "const",
                   noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """W+ [B, num_ws, w_dim] -> image [B, C, H, W] in about [-1, 1].

        ``noise`` (one entry per conv layer, from ``make_noise``) overrides ``noise_mode``.
        """
        return self._synthesize(ws, noise_mode, noise, capture=False)[0]

    def synthesize_with_features(self, ws: torch.Tensor, noise_mode: str = "const",
                                 noise: Sequence[torch.Tensor | None] | None = None
                                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The image and every conv layer's output feature map (segments and CAN masks are
        read from the original pass, so both come from one run)."""
        return self._synthesize(ws, noise_mode, noise, capture=True)

    def _synthesize(self, ws: torch.Tensor, noise_mode: str,
                    noise: Sequence[torch.Tensor | None] | None, capture: bool
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ws = self.check_ws(ws)
        if noise is None:
            noise = self.make_noise(ws.shape[0], noise_mode)
        runner = PlainRunner(ws, noise, capture=capture)
        img = self.synthesis.run(ws.shape[0], runner)
        return img, runner.features

    def features_up_to(self, ws: torch.Tensor, noise: Sequence[torch.Tensor | None],
                       last_layer: int) -> list[torch.Tensor]:
        """Feature maps of conv layers 1..last_layer, without running the rest."""
        if last_layer <= 0:
            return []
        runner = PlainRunner(self.check_ws(ws), noise, capture=True, stop_after=last_layer)
        try:
            self.synthesis.run(ws.shape[0], runner)
        except _StopSynthesis:
            pass
        return runner.features

    def run_synthesis(self, batch: int, runner: LayerRunner) -> torch.Tensor:
        """Step the synthesis through a caller-supplied runner (used by the CORAL blend)."""
        return self.synthesis.run(batch, runner)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const"
                ) -> torch.Tensor:
        ws = self.mapping_ws(z, truncation_psi, truncation_cutoff)
        return self.synthesize(ws, noise_mode=noise_mode)  # type: ignore[return-value]

    # ---- identity -----------------------------------------------------------------------------
    def w_spread(self, samples: int = 4096) -> torch.Tensor:
        """Per-dimension standard deviation of w over seeded z draws [w_dim], cached.

        Edit directions are learned in these units, so one L2 weight and one learning rate suit
        a face model (w spread about 1) and the small demo generator (spread of tens) alike.
        Deterministic (fixed seed) so the same generator always gives the same units.
        """
        cached = getattr(self, "_w_spread", None)
        if cached is None or cached.device != self.w_avg.device:
            g = torch.Generator().manual_seed(20230305)
            z = torch.randn(samples, self.z_dim, generator=g).to(self.w_avg.device)
            with torch.no_grad():
                w = self.mapping(z)[:, 0]
            cached = w.std(0).clamp_min(1e-3 * float(w.std(0).max().clamp_min(1e-8)))
            self._w_spread = cached
        return cached

    def fingerprint(self) -> str:
        """Hash of the learned parameters, the same whichever file format they came from.

        Edits record it so that applying an edit to another generator is caught; buffers (noise,
        filters) are left out because formats store them differently.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, p in sorted(self.named_parameters()):
                h.update(name.encode())
                h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Call after changing weights in place (e.g. pivotal tuning)."""
        self._fingerprint = None

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def image_to_uint8(img: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] -> uint8 [B, H, W, C], as NVIDIA's script: img*127.5+128."""
    x = (img.detach().permute(0, 2, 3, 1).to(torch.float32) * 127.5 + 128).clamp(0, 255)
    return x.to(torch.uint8).cpu().numpy()
