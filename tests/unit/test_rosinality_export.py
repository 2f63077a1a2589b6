"""`coral world export-rosinality` writes what rosinality's own code names and shapes, and a
rosinality file of any channel layout reads back to the same generator."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fabricate import random_generator, tiny_config, write_rosinality

from coral_core.errors import ModelFormatError
from coral_core.formats import load_generator, nvlabs_to_rosinality


def _expected_names(log_size: int, n_mlp: int) -> set[str]:
    """rosinality's Generator: style.0 is PixelNorm (no weights), style.1..n_mlp EqualLinear;
    input, conv1 / to_rgb1 at 4 px, then two StyledConvs and one ToRGB per resolution, one
    noise buffer per conv."""
    names = {f"style.{i}.{p}" for i in range(1, n_mlp + 1) for p in ("weight", "bias")}
    names.add("input.input")
    conv = ("conv.weight", "conv.modulation.weight", "conv.modulation.bias", "noise.weight",
            "activate.bias")
    rgb = ("conv.weight", "conv.modulation.weight", "conv.modulation.bias", "bias")
    names |= {f"conv1.{p}" for p in conv} | {f"to_rgb1.{p}" for p in rgb}
    for i in range(2 * (log_size - 2)):
        names |= {f"convs.{i}.{p}" for p in conv}
        if i % 2 == 0:
            names.add(f"convs.{i}.conv.blur.kernel")
    for i in range(log_size - 2):
        names |= {f"to_rgbs.{i}.{p}" for p in rgb} | {f"to_rgbs.{i}.upsample.kernel"}
    names |= {f"noises.noise_{i}" for i in range(2 * (log_size - 2) + 1)}
    return names


def test_the_export_has_rosinalitys_names_shapes_and_kernels():
    gen = random_generator(tiny_config(), seed=3)
    g = nvlabs_to_rosinality(gen)["g_ema"]
    assert set(g) == _expected_names(log_size=5, n_mlp=2)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = torch.outer(taps, taps) / 64 * 4  # make_kernel, times the upsampling factor^2
    for name, value in g.items():
        if name.endswith("kernel"):
            assert torch.allclose(value, kernel), name
    assert g["to_rgb1.bias"].shape == (1, 3, 1, 1) and g["to_rgbs.2.bias"].shape == (1, 3, 1, 1)
    assert g["conv1.activate.bias"].shape == (32,) and g["convs.5.activate.bias"].shape == (8,)
    assert g["noises.noise_0"].shape == (1, 1, 4, 4) and g["noises.noise_6"].shape == \
        (1, 1, 32, 32)
    assert g["conv1.noise.weight"].shape == (1,)


@pytest.mark.parametrize("change, words", [
    ({"architecture": "orig"}, "rosinality checkpoints only hold 'skip' generators; this one "),
    ({"use_noise": False}, "rosinality checkpoints always have noise inputs")])
def test_generators_rosinality_cannot_hold_are_refused(change, words):
    gen = random_generator(tiny_config(**change), seed=3)
    with pytest.raises(ModelFormatError, match=words):
        nvlabs_to_rosinality(gen)


@pytest.mark.parametrize("base, cmax", [(256, 32), (512, 16), (128, 64), (1024, 32), (64, 8)])
def test_every_channel_layout_reads_back_to_the_same_generator(tmp_path: Path, base, cmax):
    gen = random_generator(tiny_config(channel_base=base, channel_max=cmax), seed=4)
    loaded = load_generator(write_rosinality(gen, tmp_path / "g.pt")).generator
    assert [c.out_channels for c in loaded.conv_layers] == \
        [c.out_channels for c in gen.conv_layers]
    ws = gen.mapping_ws(gen.z_from_seeds([1, 2]), 0.7)
    with torch.no_grad():
        a = gen.synthesize(ws, noise_mode="const")
        b = loaded.synthesize(ws, noise_mode="const")
    assert torch.allclose(a, b, atol=1e-5)
    assert loaded.cfg.conv_clamp is None and loaded.cfg.img_channels == 3


def test_a_rosinality_generator_without_its_constant_input_is_refused(tmp_path: Path):
    g = nvlabs_to_rosinality(random_generator(tiny_config(), seed=3))
    del g["g_ema"]["input.input"]
    torch.save(g, tmp_path / "r.pt")
    with pytest.raises(ModelFormatError, match=r"r\.pt: g_ema is not a rosinality StyleGAN2 "
                                               r"generator \(no style\.N\.weight / "
                                               r"input\.input keys\)"):
        load_generator(tmp_path / "r.pt")
