"""The two direction forms as an edit uses them: a global W+ offset (per prompt or per image)
and the latent mapper (an offset computed from each image's own w)."""
from __future__ import annotations

import pytest
import torch

from coral_core.editing.directions import (BiEqual, GlobalDirection, LatentMapper,
                                           mapper_groups)


def test_a_global_offset_is_in_the_generator_s_units_and_starts_small_but_not_zero() -> None:
    scale = torch.tensor([1.0, 2.0, 4.0])
    d = GlobalDirection(num_ws=5, w_dim=3, rows=2, init_std=0.01, seed=7, scale=scale)
    assert d.delta.shape == (2, 5, 3)
    assert 0 < float(d.delta.detach().abs().max()) < 0.1          # tiny, so masks get a gradient
    assert torch.equal(d.offset(), d.delta * scale)
    again = GlobalDirection(num_ws=5, w_dim=3, rows=2, init_std=0.01, seed=7, scale=scale)
    assert torch.equal(again.delta, d.delta)              # the seed fixes the start
    other = GlobalDirection(num_ws=5, w_dim=3, rows=2, init_std=0.01, seed=8, scale=scale)
    assert not torch.equal(other.delta, d.delta)
    wide = GlobalDirection(num_ws=5, w_dim=3, rows=2, init_std=0.1, seed=7, scale=scale)
    assert torch.allclose(wide.delta, 10 * d.delta)
    assert torch.equal(GlobalDirection(2, 3).scale, torch.ones(3))  # no scale: raw units


def test_the_scale_travels_with_the_saved_state_and_is_not_trained() -> None:
    scale = torch.tensor([0.5, 3.0])
    d = GlobalDirection(num_ws=2, w_dim=2, scale=scale)
    assert torch.equal(d.state_dict()["scale"], scale)
    assert [name for name, _ in d.named_parameters()] == ["delta"]
    scale.mul_(10)  # the caller's tensor changing later does not move the edit
    assert torch.equal(d.scale, torch.tensor([0.5, 3.0]))


def test_one_offset_per_prompt_serves_every_image_and_one_per_image_serves_its_own() -> None:
    ws = torch.zeros(4, 3, 2)
    shared = GlobalDirection(num_ws=3, w_dim=2, rows=1)
    out = shared(ws)
    assert out.shape == (4, 3, 2) and bool((out == shared.offset()[0]).all())
    own = GlobalDirection(num_ws=3, w_dim=2, rows=4)
    assert torch.equal(own(ws), own.offset())


def test_the_l2_is_the_squared_length_per_row_in_w_spread_units() -> None:
    d = GlobalDirection(num_ws=2, w_dim=2, rows=2, scale=torch.tensor([5.0, 5.0]))
    with torch.no_grad():
        d.delta.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[3.0, 0.0], [0.0, 0.0]]]))
    assert float(d.l2().detach()) == pytest.approx((2.0 + 9.0) / 2)  # not in the scaled units


@pytest.mark.parametrize("num_ws, groups", [
    (18, [(0, 4), (4, 8), (8, 18)]), (14, [(0, 4), (4, 8), (8, 14)]),
    (8, [(0, 4), (4, 8)]), (6, [(0, 4), (4, 6)]), (3, [(0, 3)]), (1, [(0, 1)])])
def test_the_mapper_splits_w_plus_into_coarse_medium_and_fine(num_ws, groups) -> None:
    assert mapper_groups(num_ws) == groups


def test_a_biequal_unit_is_zero_when_both_branches_agree() -> None:
    unit = BiEqual(4)
    unit.b.load_state_dict(unit.a.state_dict())
    assert torch.equal(unit(torch.randn(3, 4)), torch.zeros(3, 4))
    with torch.no_grad():  # a = identity, b = 0: leaky ReLU with slope 0.2 below zero
        unit.a.weight.copy_(torch.eye(4))
        unit.a.bias.zero_()
        unit.b.weight.zero_()
        unit.b.bias.zero_()
    x = torch.tensor([[2.0, -1.0, 0.0, -5.0]])
    assert torch.allclose(unit(x), torch.tensor([[2.0, -0.2, 0.0, -1.0]]))


def test_the_mapper_gives_each_image_its_own_small_offset_in_w_spread_units() -> None:
    torch.manual_seed(0)
    spread = torch.linspace(0.5, 2.0, 8)
    mapper = LatentMapper(num_ws=10, w_dim=8, scale=0.1, spread=spread)
    ws = torch.randn(3, 10, 8)
    delta = mapper(ws)
    assert delta.shape == (3, 10, 8)
    assert 0 < float(delta.detach().abs().max()) < 0.05          # near zero at the start, not zero
    assert not torch.allclose(delta[0], delta[1])        # image-specific
    assert torch.equal(mapper.spread, spread)
    louder = LatentMapper(num_ws=10, w_dim=8, scale=0.2, spread=spread)
    louder.load_state_dict(mapper.state_dict())
    assert torch.allclose(louder(ws), 2 * delta)
    # the L2 is read in spread units: an offset of exactly one spread per entry costs 1
    assert float(mapper.l2(spread.expand(3, 10, 8))) == pytest.approx(1.0)


def test_each_mapper_group_reads_only_its_own_entries_and_ignores_w_s_scale() -> None:
    torch.manual_seed(1)
    mapper = LatentMapper(num_ws=10, w_dim=8)
    for block in mapper.blocks:  # a trained-looking mapper, so its outputs differ
        torch.nn.init.normal_(block.out.weight, std=0.5)
    ws = torch.randn(2, 10, 8)
    base = mapper(ws)
    fine_changed = ws.clone()
    fine_changed[:, 8:] += 1.0
    out = mapper(fine_changed)
    assert torch.allclose(out[:, :8], base[:, :8])       # coarse and medium untouched
    assert not torch.allclose(out[:, 8:], base[:, 8:])
    # StyleCLIP's pixel norm: an entry's overall magnitude does not matter, its shape does
    assert torch.allclose(mapper(ws * 3.0), base, atol=1e-5)


def test_the_defaults_one_row_seed_zero_small_start_and_float32_units() -> None:
    d = GlobalDirection(num_ws=3, w_dim=4)
    assert d.delta.shape == (1, 3, 4)
    assert torch.equal(d.delta, GlobalDirection(3, 4, rows=1, init_std=0.01, seed=0).delta)
    wide = GlobalDirection(3, 4, scale=torch.ones(4, dtype=torch.float64))
    assert wide.scale.dtype == torch.float32
    mapper = LatentMapper(num_ws=3, w_dim=4, spread=torch.ones(4, dtype=torch.float64))
    assert mapper.spread.dtype == torch.float32 and mapper.scale == 0.1
    assert len(mapper.blocks[0].units) == 4  # StyleCLIP's four BiEqual units per group


def test_the_l2_is_averaged_over_rows_not_entries() -> None:
    d = GlobalDirection(num_ws=3, w_dim=2, rows=2)
    with torch.no_grad():
        d.delta.fill_(1.0)
    assert float(d.l2().detach()) == pytest.approx(6.0)


def test_the_mapper_normalises_each_entry_on_its_own_and_each_image_alone() -> None:
    torch.manual_seed(2)
    mapper = LatentMapper(num_ws=4, w_dim=8)
    for block in mapper.blocks:
        torch.nn.init.normal_(block.out.weight, std=0.5)
    ws = torch.randn(3, 4, 8)
    base = mapper(ws)
    louder = ws.clone()
    louder[:, 1] *= 5.0  # one entry's magnitude: only the pixel norm of that entry sees it
    assert torch.allclose(mapper(louder), base, atol=1e-5)
    assert torch.allclose(mapper(ws[1:2]), base[1:2], atol=1e-6)  # alone as in a batch
    spread = torch.linspace(0.5, 2.0, 8)
    wide = LatentMapper(num_ws=4, w_dim=8, spread=spread)
    wide.load_state_dict({**mapper.state_dict(), "spread": spread})
    assert torch.allclose(wide(ws), base * spread, atol=1e-6)
