"""The generator: numerics against an independent reference, structure, latents, noise."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from coral_core.stylegan import Generator, GeneratorConfig
from coral_core.stylegan.generator import PlainRunner, image_to_uint8
from fabricate import random_generator, tiny_config
from reference_stylegan import reference_mapping, reference_synthesis


@pytest.mark.parametrize("arch", ["skip", "orig", "resnet"])
@pytest.mark.parametrize("clamp", [None, 0.5])
def test_matches_independent_reference(arch: str, clamp: float | None) -> None:
    # clamp 0.5 is small enough that the conv_clamp path is really exercised
    G = random_generator(tiny_config(architecture=arch, conv_clamp=clamp))
    sd = {k: v.clone() for k, v in G.state_dict().items()}
    z = G.z_from_seeds([0, 1, 2])
    ws = G.mapping_ws(z, truncation_psi=0.7, truncation_cutoff=5)
    ws_ref = reference_mapping(sd, G.cfg, z, psi=0.7, cutoff=5)
    assert (ws - ws_ref).abs().max() < 1e-5
    img = G.synthesize(ws, noise_mode="const")
    ref = reference_synthesis(sd, G.cfg, ws, "const")
    assert img.shape == (3, 3, 32, 32)
    assert (img - ref).abs().max() < 1e-4
    assert (G.synthesize(ws, noise_mode="none") - reference_synthesis(sd, G.cfg, ws, "none")
            ).abs().max() < 1e-4


def test_wider_channels_and_mapping_depth() -> None:
    cfg = tiny_config(img_resolution=64, channel_base=1024, channel_max=48, mapping_layers=4,
                      z_dim=24, w_dim=40)
    G = random_generator(cfg)
    assert [c.out_channels for c in G.conv_layers] == [48, 48, 48, 48, 48, 32, 32, 16, 16]
    ws = G.mapping_ws(G.z_from_seeds([3]))
    assert ws.shape == (1, 10, 40)
    ref = reference_synthesis(G.state_dict(), cfg, ws)
    assert (G.synthesize(ws) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("res,num_ws", [(4, 2), (32, 8), (256, 14), (1024, 18)])
def test_num_ws_and_layer_table(res: int, num_ws: int) -> None:
    cfg = GeneratorConfig(img_resolution=res, channel_base=res * 2, channel_max=4, z_dim=4,
                          w_dim=4, mapping_layers=1)
    G = Generator(cfg)
    assert G.num_ws == num_ws
    layers = G.conv_layers
    assert len(layers) == num_ws - 1
    assert [c.index for c in layers] == list(range(1, num_ws))
    assert [c.w_index for c in layers] == list(range(num_ws - 1))
    assert layers[0].resolution == 4 and layers[-1].resolution == res
    assert G.torgb_layers[-1].w_index == num_ws - 1
    for rgb in G.torgb_layers:  # a toRGB shares its w with the next block's conv0
        assert layers[rgb.reads_layer - 1].resolution == rgb.resolution


def test_features_and_layer_by_layer_runner() -> None:
    G = random_generator()
    ws = G.mapping_ws(G.z_from_seeds([5, 6]))
    img, feats = G.synthesize_with_features(ws)
    assert [f.shape[-1] for f in feats] == [c.resolution for c in G.conv_layers]
    assert [f.shape[1] for f in feats] == [c.out_channels for c in G.conv_layers]
    runner = PlainRunner(ws, G.make_noise(2, "const"))
    assert torch.equal(G.run_synthesis(2, runner), img)


def test_noise_modes_and_explicit_noise() -> None:
    G = random_generator()
    ws = G.mapping_ws(G.z_from_seeds([1]))
    a = G.synthesize(ws, noise_mode="random")
    b = G.synthesize(ws, noise_mode="random")
    assert (a - b).abs().max() > 1e-4  # random noise really changes the image
    fixed = G.make_noise(1, "random", generator=torch.Generator().manual_seed(7))
    assert torch.equal(G.synthesize(ws, noise=fixed), G.synthesize(ws, noise=fixed))
    assert not torch.equal(G.synthesize(ws, noise_mode="const"),
                           G.synthesize(ws, noise_mode="none"))
    with pytest.raises(ValueError, match="noise mode"):
        G.make_noise(1, "sometimes")


def test_seeds_match_nvidia_generate_py() -> None:
    G = random_generator()
    z = G.z_from_seeds([0, 42])
    expected = np.random.RandomState(42).randn(1, G.z_dim)
    assert np.allclose(z[1].numpy(), expected[0].astype(np.float32))
    assert z.dtype == torch.float32


def test_uint8_conversion_as_nvidia() -> None:
    img = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.2]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = image_to_uint8(img)
    assert out.shape == (1, 1, 5, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_wrong_latent_shape_is_a_clear_error() -> None:
    G = random_generator()
    with pytest.raises(ValueError, match=r"\[B, 8, 32\]"):
        G.synthesize(torch.zeros(1, 7, 32))


def test_fingerprint_tracks_weights() -> None:
    a, b = random_generator(seed=0), random_generator(seed=0)
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad():
        b.synthesis.b4.const.add_(1)
    b.invalidate_fingerprint()
    assert a.fingerprint() != b.fingerprint()


def test_fused_and_unfused_modulated_conv_agree_with_gradients(monkeypatch) -> None:
    """The unfused form (the library default: faster for forward + backward on the CPU) is the
    same maths as NVlabs' fused grouped convolution: images and W+ gradients agree."""
    from coral_core.stylegan import ops

    G = random_generator()
    ws0 = G.mapping_ws(G.z_from_seeds([1, 2, 3]))
    out = {}
    for fused in (True, False):
        monkeypatch.setattr(ops, "FUSED_MODCONV", fused)
        ws = ws0.clone().requires_grad_(True)
        img = G.synthesize(ws)
        img.square().mean().backward()
        out[fused] = (img.detach(), ws.grad)
    assert torch.allclose(out[True][0], out[False][0], atol=1e-4)
    assert torch.allclose(out[True][1], out[False][1], atol=1e-5, rtol=1e-3)
    assert out[True][1].abs().max() > 0
