"""The four invariants of multi-layer feed-forward blending, and branch skipping."""
from __future__ import annotations

import pytest
import torch

from coral_core.editing.blend import BlendRunner, blended_synthesis, stacked_synthesis
from fabricate import random_generator, tiny_config


@pytest.fixture(scope="module")
def setup():
    G = random_generator(tiny_config(conv_clamp=None))
    ws = G.mapping_ws(G.z_from_seeds([0, 1]), 0.7)
    delta = torch.randn(1, G.num_ws, G.w_dim) * 0.5
    noise = G.make_noise(2, "random", generator=torch.Generator().manual_seed(3))
    return G, ws, delta, noise


def _masks(G, value: float, batch: int = 2):
    return [torch.full((batch, 1, c.resolution, c.resolution), value) for c in G.conv_layers]


def test_all_masks_zero_is_the_original_bit_for_bit(setup) -> None:
    G, ws, delta, noise = setup
    out = blended_synthesis(G, ws, delta, _masks(G, 0.0), noise)
    assert torch.equal(out, G.synthesize(ws, noise=noise))
    # masks that require grad are computed through both branches: still exact
    m = [t.requires_grad_() for t in _masks(G, 0.0)]
    assert torch.equal(blended_synthesis(G, ws, delta, m, noise), G.synthesize(ws, noise=noise))


def test_all_masks_one_is_the_edited_generator_bit_for_bit(setup) -> None:
    G, ws, delta, noise = setup
    out = blended_synthesis(G, ws, delta, _masks(G, 1.0), noise)
    assert torch.equal(out, G.synthesize(ws + delta, noise=noise))


def test_zero_direction_gives_exactly_zero_mask_gradient(setup) -> None:
    G, ws, _, noise = setup
    masks = [torch.rand(2, 1, c.resolution, c.resolution, requires_grad=True)
             for c in G.conv_layers]
    d = torch.zeros(1, G.num_ws, G.w_dim, requires_grad=True)
    blended_synthesis(G, ws, d, masks, noise).square().sum().backward()
    assert all(m.grad is not None and torch.count_nonzero(m.grad) == 0 for m in masks)
    assert d.grad is not None and d.grad.abs().sum() > 0


def test_no_gradient_reaches_the_generator(setup) -> None:
    G, ws, delta, noise = setup
    G.requires_grad_(False)
    d = delta.clone().requires_grad_()
    masks = [torch.full((2, 1, c.resolution, c.resolution), 0.5, requires_grad=True)
             for c in G.conv_layers]
    blended_synthesis(G, ws, d, masks, noise).mean().backward()
    assert all(p.grad is None for p in G.parameters())
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in masks)


def test_edit_at_an_early_layer_flows_into_later_layers(setup) -> None:
    G, ws, delta, noise = setup
    masks = [None] * len(G.conv_layers)
    masks[0] = torch.ones(2, 1, 4, 4)
    out = blended_synthesis(G, ws, delta, masks, noise)
    base = G.synthesize(ws, noise=noise)
    assert (out - base).abs().max() > 1e-3
    # and differs from a full edit: later layers refuse *new* style changes
    assert (out - G.synthesize(ws + delta, noise=noise)).abs().max() > 1e-3


def test_max_layer_and_branch_skipping(setup) -> None:
    G, ws, delta, noise = setup
    masks = _masks(G, 1.0)
    runner = BlendRunner(ws, [(delta.expand(2, -1, -1), [None, None, masks[2], None,
                                                          torch.zeros(2, 1, 16, 16),
                                                          None, None])], noise)
    G.run_synthesis(2, runner)
    assert runner.edited_layers == [3]  # None and frozen all-zero masks compute one branch
    limited = blended_synthesis(G, ws, delta, masks, noise, max_layer=3)
    manual = blended_synthesis(G, ws, delta, masks[:3] + [None] * 4, noise)
    assert torch.equal(limited, manual)


def test_stacking_two_edits(setup) -> None:
    G, ws, delta, noise = setup
    other = torch.randn_like(delta) * 0.3
    zero = [None] * len(G.conv_layers)
    one = stacked_synthesis(G, ws, [(delta, _masks(G, 1.0)), (other, zero)], noise)
    assert torch.equal(one, G.synthesize(ws + delta, noise=noise))
    both = stacked_synthesis(G, ws, [(delta, _masks(G, 1.0)), (other, _masks(G, 1.0))], noise)
    # the second edit fully replaces: its branch reads w + other on top of the first's features
    assert (both - one).abs().max() > 1e-3
