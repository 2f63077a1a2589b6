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
