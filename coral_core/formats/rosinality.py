"""rosinality ``stylegan2-pytorch`` checkpoints (the StyleCLIP / e4e / PTI world), both ways.

Key mapping from formats.md §2.6; no flips or rescaling are needed. The rosinality code keeps no
config, so the resolution, mapping depth and channels are read off the tensor shapes.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFormatError
from ..stylegan import Generator, GeneratorConfig
from ..stylegan.ops import make_resample_filter


def _ros_conv_name(layer: str) -> tuple[str, int | None]:
    """NVlabs block-level conv name -> rosinality module name and noise index."""
    m = re.fullmatch(r"b(\d+)\.(conv0|conv1)", layer)
    assert m
    res, which = int(m.group(1)), m.group(2)
    if res == 4:
        return "conv1", 0
    j = res.bit_length() - 1 - 3
    idx = 2 * j + (0 if which == "conv0" else 1)
    return f"convs.{idx}", idx + 1


def _ros_torgb_name(res: int) -> str:
    return "to_rgb1" if res == 4 else f"to_rgbs.{res.bit_length() - 1 - 3}"


def nvlabs_to_rosinality(G: Generator) -> dict[str, Any]:
    """A rosinality checkpoint dict ``{'g_ema': ..., 'latent_avg': ...}`` for this generator."""
    if G.cfg.architecture != "skip":
        raise ModelFormatError("rosinality checkpoints only hold 'skip' generators; this one "
                               f"is {G.cfg.architecture!r}")
    if not G.cfg.use_noise:
        raise ModelFormatError("rosinality checkpoints always have noise inputs")
    sd = G.state_dict()
    out: dict[str, torch.Tensor] = {}
    for i in range(G.cfg.mapping_layers):
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"].clone()
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"].clone()
    out["input.input"] = sd["synthesis.b4.const"][None].clone()
    kernel = make_resample_filter() * 4
    for info in G.conv_layers:
        name, noise_idx = _ros_conv_name(info.name)
        src = f"synthesis.{info.name}."
        out[f"{name}.conv.weight"] = sd[src + "weight"][None].clone()
        out[f"{name}.conv.modulation.weight"] = sd[src + "affine.weight"].clone()
        out[f"{name}.conv.modulation.bias"] = sd[src + "affine.bias"].clone()
        out[f"{name}.noise.weight"] = sd[src + "noise_strength"].reshape(1).clone()
        out[f"{name}.activate.bias"] = sd[src + "bias"].clone()
        if info.name.endswith("conv0"):
            out[f"{name}.conv.blur.kernel"] = kernel.clone()
        out[f"noises.noise_{noise_idx}"] = sd[src + "noise_const"][None, None].clone()
    for rgb in G.torgb_layers:
        name, src = _ros_torgb_name(rgb.resolution), f"synthesis.b{rgb.resolution}.torgb."
        out[f"{name}.conv.weight"] = sd[src + "weight"][None].clone()
        out[f"{name}.conv.modulation.weight"] = sd[src + "affine.weight"].clone()
        out[f"{name}.conv.modulation.bias"] = sd[src + "affine.bias"].clone()
        out[f"{name}.bias"] = sd[src + "bias"].reshape(1, -1, 1, 1).clone()
        if rgb.resolution > 4:
            out[f"{name}.upsample.kernel"] = kernel.clone()
    return {"g_ema": out, "latent_avg": sd["mapping.w_avg"].clone()}


def _infer_channel_layout(channels: dict[int, int], path: Path) -> tuple[int, int]:
    """Find (channel_base, channel_max) with min(base // r, max) == channels[r] for every r."""
    channel_max = max(channels.values())
    below = [r for r in sorted(channels) if channels[r] < channel_max]
    candidates = [channels[below[0]] * below[0]] if below else [channel_max * max(channels)]
    for base in candidates + [channels[r] * r for r in below[1:]]:
        if all(min(base // r, channel_max) == c for r, c in channels.items()):
            return base, channel_max
    raise ModelFormatError(
        f"{path}: channel counts per resolution {channels} do not follow the StyleGAN2 rule "
        "min(channel_base / r, channel_max); this generator layout is not supported")


def config_from_rosinality(g: dict[str, torch.Tensor], path: Path) -> GeneratorConfig:
    n_mlp = len([k for k in g if re.fullmatch(r"style\.\d+\.weight", k)])
    if n_mlp == 0 or "input.input" not in g:
        raise ModelFormatError(f"{path}: g_ema is not a rosinality StyleGAN2 generator "
                               "(no style.N.weight / input.input keys)")
    n_rgbs = len([k for k in g if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
    res = 2 ** (n_rgbs + 2)
    style_dim = int(g["style.1.weight"].shape[0])
    z_dim = int(g["style.1.weight"].shape[1])
    channels = {4: int(g["input.input"].shape[1])}
    for j in range(n_rgbs):
        channels[2 ** (j + 3)] = int(g[f"convs.{2 * j}.conv.weight"].shape[1])
    base, cmax = _infer_channel_layout(channels, path)
    return GeneratorConfig(img_resolution=res, z_dim=z_dim, w_dim=style_dim,
                           img_channels=int(g["to_rgb1.conv.weight"].shape[1]),
                           mapping_layers=n_mlp, channel_base=base, channel_max=cmax,
                           conv_clamp=None, architecture="skip", use_noise=True)


def rosinality_to_nvlabs_state(g: dict[str, torch.Tensor], cfg: GeneratorConfig,
                               latent_avg: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Inverse of ``nvlabs_to_rosinality``: NVlabs-named state dict (filters regenerated)."""
    template = Generator(cfg)
    sd: dict[str, torch.Tensor] = {}
    for i in range(cfg.mapping_layers):
        sd[f"mapping.fc{i}.weight"] = g[f"style.{i + 1}.weight"]
        sd[f"mapping.fc{i}.bias"] = g[f"style.{i + 1}.bias"]
    sd["mapping.w_avg"] = (latent_avg.reshape(-1, cfg.w_dim)[0] if latent_avg is not None
                           else torch.zeros(cfg.w_dim))
    sd["synthesis.b4.const"] = g["input.input"][0]
    for info in template.conv_layers:
        name, noise_idx = _ros_conv_name(info.name)
        dst = f"synthesis.{info.name}."
        sd[dst + "weight"] = g[f"{name}.conv.weight"][0]
        sd[dst + "affine.weight"] = g[f"{name}.conv.modulation.weight"]
        sd[dst + "affine.bias"] = g[f"{name}.conv.modulation.bias"]
        sd[dst + "noise_strength"] = g[f"{name}.noise.weight"].reshape(())
        sd[dst + "bias"] = g[f"{name}.activate.bias"]
        noise_key = f"noises.noise_{noise_idx}"
        sd[dst + "noise_const"] = (g[noise_key][0, 0] if noise_key in g
                                   else template.state_dict()[dst + "noise_const"])
    for rgb in template.torgb_layers:
        name, dst = _ros_torgb_name(rgb.resolution), f"synthesis.b{rgb.resolution}.torgb."
        sd[dst + "weight"] = g[f"{name}.conv.weight"][0]
        sd[dst + "affine.weight"] = g[f"{name}.conv.modulation.weight"]
        sd[dst + "affine.bias"] = g[f"{name}.conv.modulation.bias"]
        sd[dst + "bias"] = g[f"{name}.bias"].reshape(-1)
    for key, value in template.state_dict().items():
        if key.endswith("resample_filter"):
            sd[key] = value
    return sd
