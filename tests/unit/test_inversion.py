"""Inversion: input handling, recovery of known latents, PTI on a copy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from coral_core.errors import InputError
from coral_core.inversion import InvertConfig, invert, prepare_images
from fabricate import random_generator, tiny_config


def test_prepare_images_handles_sizes_grey_and_alpha() -> None:
    rgb = np.zeros((40, 64, 3), dtype=np.uint8)
    rgb[:, 12:52] = 255  # the centre square is white
    out = prepare_images(rgb, 32)
    assert out.shape == (1, 3, 32, 32) and torch.allclose(out, torch.ones_like(out))
    grey = torch.full((2, 20, 20, 1), 0.5)
    assert prepare_images(grey, 16).shape == (2, 3, 16, 16)
    rgba = torch.zeros(1, 16, 16, 4)  # fully transparent -> white
    assert torch.allclose(prepare_images(rgba, 16), torch.ones(1, 3, 16, 16))
    with pytest.raises(InputError, match="too small"):
        prepare_images(np.zeros((5, 3, 3), dtype=np.uint8), 32)
    with pytest.raises(InputError, match="channels"):
        prepare_images(torch.zeros(1, 16, 16, 5), 16)


def test_w_plus_inversion_recovers_a_generated_image() -> None:
    G = random_generator(tiny_config(conv_clamp=None))
    with torch.no_grad():
        target = G.synthesize(G.mapping_ws(G.z_from_seeds([4]), 0.5))
    res = invert(G, target, InvertConfig(space="w+", steps=150, lr=0.05))
    start = invert(G, target, InvertConfig(space="w+", steps=1, lr=0.0))
    assert res.psnr[0] > start.psnr[0] + 3
    assert res.ws.shape == (1, G.num_ws, G.w_dim) and res.generator is None


def test_pti_tunes_a_copy_and_improves_the_fit() -> None:
    G = random_generator(tiny_config(conv_clamp=None))
    before = G.fingerprint()
    target = torch.rand(1, 3, 32, 32) * 2 - 1  # not drawable by G
    res = invert(G, target, InvertConfig(space="w", steps=20, pti_steps=40, pti_lr=3e-3))
    no_pti = invert(G, target, InvertConfig(space="w", steps=20))
    assert res.generator is not None and res.generator is not G
    assert G.fingerprint() == before  # the cached model is never modified
    assert res.generator.fingerprint() != before
    assert res.psnr[0] > no_pti.psnr[0]


def test_e4e_initialiser_from_a_fabricated_checkpoint(tmp_path) -> None:
    from coral_core.inversion.e4e import Encoder4Editing, load_e4e
    from coral_core.formats import load_generator, nvlabs_to_rosinality

    G = random_generator(tiny_config(conv_clamp=None))
    # real files: depths (64, 128, 256, 512), style_dim 512 = the last depth; scaled down here
    enc = Encoder4Editing((16, 32, 48, G.w_dim), n_styles=G.num_ws, style_dim=G.w_dim)
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    ros = nvlabs_to_rosinality(G)
    sd.update({f"decoder.{k}": v for k, v in ros["g_ema"].items()})
    torch.save({"state_dict": sd, "opts": {"encoder_type": "Encoder4Editing"},
                "latent_avg": ros["latent_avg"].repeat(G.num_ws, 1)}, tmp_path / "e4e.pt")
    e4e = load_e4e(tmp_path / "e4e.pt")
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    codes = e4e.encode(img)
    assert codes.shape == (2, G.num_ws, G.w_dim)
    with torch.no_grad():
        expected = enc.eval()(torch.nn.functional.interpolate(
            img, size=(256, 256), mode="bilinear", antialias=True)) + G.w_avg
    assert torch.allclose(codes, expected, atol=1e-5)
    assert load_generator(tmp_path / "e4e.pt").format == "e4e-decoder"
    target = prepare_images(((img[:1] + 1) / 2).permute(0, 2, 3, 1), G.img_resolution)
    res = invert(G, target, InvertConfig(space="w+", steps=3),
                 init_ws=e4e.encode(target))
    assert res.ws.shape == (1, G.num_ws, G.w_dim)
    torch.save({"state_dict": {"decoder.x": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="not an e4e checkpoint"):
        load_e4e(tmp_path / "bad.pt")


class _FakeVGG16(torch.nn.Module):
    """Same call signature as NVIDIA's vgg16.pt TorchScript (img in [0, 255])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, img: torch.Tensor, resize_images: bool = True,
                return_lpips: bool = False) -> torch.Tensor:
        f = torch.relu(self.conv(img / 255.0))
        f = f / (f.square().sum(1, keepdim=True).sqrt() + 1e-10)
        return f.flatten(1) / (f.shape[2] * f.shape[3]) ** 0.5


def test_a_vgg16_torchscript_file_is_refused_before_inversion(tmp_path) -> None:
    """Even a harmless TorchScript LPIPS file is refused: running one is running its code."""
    import warnings

    from coral_core.errors import InputError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_FakeVGG16()).save(str(tmp_path / "vgg16.pt"))
    G = random_generator(tiny_config(conv_clamp=None))
    with torch.no_grad():
        target = G.synthesize(G.mapping_ws(G.z_from_seeds([2]), 0.5))
    with pytest.raises(InputError, match="vgg16.pt"):
        invert(G, target, InvertConfig(space="w+", steps=2, perceptual_weight=1.0),
               vgg16_path=str(tmp_path / "vgg16.pt"))
