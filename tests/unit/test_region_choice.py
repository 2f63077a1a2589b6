"""The region choice on a judge whose losses are known: the large regions' contest (who
wins, what stays allowed, whose direction carries on, what a cancel leaves), pruning's
decision as the selector receives it, and hardening the chosen selection."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from coral_core.editing.config import TrainConfig
from coral_core.editing.directions import GlobalDirection
from coral_core.editing.memory import MemoryPlan
from coral_core.editing.region import (CONTEST_MIN_SHARE, HARD_LOGIT, RegionJudge,
                                       contest_regions, harden_selection, prune_region)
from coral_core.editing.selectors import AttentionSelector, SegmentSelector

RES, LAYERS, WS, WDIM = 64, 3, 2, 4


def _segs(batch: int, widths: list[int]) -> torch.Tensor:
    """Vertical strips of the given widths (columns) side by side, one segment each."""
    seg = torch.zeros(batch, len(widths), RES, RES)
    x = 0
    for k, w in enumerate(widths):
        seg[:, k, :, x:x + w] = 1
        x += w
    return seg


@dataclass
class KnownJudge(RegionJudge):
    """Per row p: loss = 1 - sum over the regions k the gate lets through of
    power[p, k] * mean(delta_p): a direction trained on a more powerful region gets further.
    (The selector's masks are not used: the gate alone says which regions act.)"""
    power: torch.Tensor | None = None
    selector: SegmentSelector | None = None
    calls: int = 0

    def masks(self, selector):
        return []

    def loss(self, selector, masks, direction, rows, recompute=False, per_image=False):
        self.calls += 1
        gate = selector.gate if selector.gate is not None else torch.ones_like(selector.logits)
        on = gate.amax(1)  # [P, K]
        move = direction.delta.reshape(direction.delta.shape[0], -1).mean(1)  # [P]
        loss = 1 - (on * self.power).sum(1) * move
        if per_image:
            return loss[None].expand(1, int(self.ws.shape[0]))
        return loss


def _judge(rows: int, widths: list[int], power: list[list[float]], steps: int = 5,
           check=None, mode: str = "per_image") -> KnownJudge:
    cfg = TrainConfig(prompt="p", contest_steps=steps, mode=mode)
    G = SimpleNamespace(num_ws=WS, w_dim=WDIM)
    return KnownJudge(G=G, cfg=cfg, ws=torch.zeros(rows, WS, WDIM), noise=[], feats=[],
                      segs=_segs(rows, widths), image_loss=lambda x: x,
                      memory=MemoryPlan(recompute=False, bf16=False), check=check,
                      power=torch.tensor(power))


def _direction(rows: int) -> GlobalDirection:
    d = GlobalDirection(WS, WDIM, rows=rows)
    with torch.no_grad():
        d.delta.fill_(0.1)
    return d


def test_the_large_region_that_does_best_alone_wins_and_carries_its_direction() -> None:
    # strips of 24, 24, 8 and 1 columns: the last is under CONTEST_MIN_SHARE of the picture
    assert 1 / RES < CONTEST_MIN_SHARE <= 8 / RES
    judge = _judge(2, [24, 24, 8, 1], [[1.0, 3.0, 0.5, 9.0], [2.0, 1.0, 0.5, 0.0]])
    sel = SegmentSelector(LAYERS, 4, rows=2)
    sel.gate = torch.ones(2, LAYERS, 4) * 0.5  # the gate before the contest comes back
    direction = _direction(2)
    allowed = torch.ones(2, LAYERS, 4, dtype=torch.bool)
    kept, report = contest_regions(judge, sel, direction, allowed)
    assert [r["winner"] for r in report] == [1, 0]
    assert kept[0].amax(0).tolist() == [False, True, False, True]  # the small strip stays
    assert kept[1].amax(0).tolist() == [True, False, False, True]
    assert [r["pieces"] for r in report] == [[0, 1, 2], [0, 1, 2]]  # largest first
    assert all(len(r["losses"]) == 3 for r in report)
    assert report[0]["losses"][1] == min(report[0]["losses"])
    assert float(direction.delta.detach().mean()) > 0.1  # the winner's trained direction
    assert torch.equal(sel.gate, torch.ones(2, LAYERS, 4) * 0.5)


def test_a_row_with_one_large_region_has_no_contest() -> None:
    judge = _judge(2, [62, 1, 1], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    sel = SegmentSelector(LAYERS, 3, rows=2)
    allowed = torch.ones(2, LAYERS, 3, dtype=torch.bool)
    allowed[1, :, 0] = False  # row 1: no large region allowed at all
    direction = _direction(2)
    before = direction.delta.detach().clone()
    kept, report = contest_regions(judge, sel, direction, allowed)
    assert report is None and torch.equal(kept, allowed)
    assert torch.equal(direction.delta.detach(), before) and judge.calls == 0


def test_only_the_rows_with_a_contest_change() -> None:
    judge = _judge(2, [32, 32], [[1.0, 2.0], [1.0, 2.0]])
    sel = SegmentSelector(LAYERS, 2, rows=2)
    allowed = torch.ones(2, LAYERS, 2, dtype=torch.bool)
    allowed[1, :, 1] = False  # row 1 has one large region left
    direction = _direction(2)
    kept, report = contest_regions(judge, sel, direction, allowed)
    assert [r["row"] for r in report] == [0]
    assert kept[0].amax(0).tolist() == [False, True]
    assert torch.equal(kept[1], allowed[1])
    assert torch.allclose(direction.delta.detach()[1], torch.full((WS, WDIM), 0.1))
    assert float(direction.delta.detach()[0].mean()) > 0.1


def test_a_cancel_during_the_contest_leaves_the_gate_as_it_was() -> None:
    class Cancelled(Exception):
        pass

    ticks = []

    def check() -> None:
        ticks.append(1)
        if len(ticks) == 3:
            raise Cancelled

    judge = _judge(1, [32, 32], [[1.0, 2.0]], check=check)
    sel = SegmentSelector(LAYERS, 2)
    sel.gate = None
    with pytest.raises(Cancelled):
        contest_regions(judge, sel, _direction(1), torch.ones(1, LAYERS, 2, dtype=torch.bool))
    assert sel.gate is None


def test_each_rival_trains_the_configured_number_of_steps() -> None:
    for steps in (1, 4):
        ticks = []
        judge = _judge(1, [32, 32], [[1.0, 2.0]], steps=steps, check=functools.partial(ticks.append, 1))
        contest_regions(judge, SegmentSelector(LAYERS, 2), _direction(1),
                        torch.ones(1, LAYERS, 2, dtype=torch.bool))
        assert len(ticks) == 2 * steps  # two rivals


def test_pruning_sets_its_decision_and_reports_what_it_removed() -> None:
    """Row 0 selected segments 0 and 2 (segment 2 adds little); row 1 nothing yet, so all
    its segments are candidates, and as three equal parts all stay. The contest is off, so
    pruning alone decides."""
    judge = _judge(2, [20, 20, 24], [[1.0, 0.0, 0.02], [0.3, 0.3, 0.3]], steps=0)
    sel = SegmentSelector(LAYERS, 3, rows=2, init=0.2)
    with torch.no_grad():
        sel.logits[0, :, 0] = 5.0
        sel.logits[0, 1, 2] = 5.0
    out = prune_region(judge, sel, _direction(2))
    assert out["segments"] == [[0, 2]]
    assert out["judged_images"] == 2 and "contest" not in out
    assert sel.gate is not None
    assert sel.gate[0].amax(0).tolist() == [1.0, 0.0, 0.0]
    assert sel.gate[1].amax(0).tolist() == [1.0, 1.0, 1.0]


def test_a_segment_the_images_do_not_show_is_left_to_training() -> None:
    judge = _judge(1, [32, 32, 0], [[1.0, 0.01, 5.0]], steps=0, mode="per_prompt")
    sel = SegmentSelector(LAYERS, 3, init=0.9)
    out = prune_region(judge, sel, _direction(1))
    assert out["segments"] == [[0, 1]]
    assert sel.gate[0].amax(0).tolist() == [1.0, 0.0, 1.0]  # segment 2: absent, not judged


def test_an_attention_edit_is_pruned_over_the_clusters_its_images_show() -> None:
    judge = _judge(1, [32, 32], [[1.0, 0.01]], steps=0, mode="per_prompt")
    sel = AttentionSelector([4, 4, 4])

    def loss(selector, masks, direction, rows, recompute=False, per_image=False):
        gate = selector.cluster_gate if selector.cluster_gate is not None else torch.ones(1, 2)
        value = 1 - (gate * judge.power).sum(1) * 0.5
        return value[None].expand(1, 2) if per_image else value

    judge.loss = loss  # type: ignore[method-assign]
    out = prune_region(judge, sel, _direction(1))
    assert sel.cluster_gate is not None and sel.cluster_gate.tolist() == [[1.0, 0.0]]
    assert out["segments"] == [[0, 1]]


def test_several_batches_are_only_for_a_per_prompt_edit() -> None:
    judge = _judge(2, [32, 32], [[1.0, 0.0], [1.0, 0.0]], steps=0)
    with pytest.raises(ValueError, match="per-prompt"):
        prune_region(judge, SegmentSelector(LAYERS, 2, rows=2), _direction(2), more=[judge])


def test_hardening_makes_the_selection_exact_and_frozen() -> None:
    sel = SegmentSelector(LAYERS, 3, rows=2)
    with torch.no_grad():
        sel.logits.copy_(torch.logit(torch.tensor(
            [[[0.9, 0.2, 0.4], [0.6, 0.1, 0.3], [0.2, 0.2, 0.2]],
             [[0.3, 0.4, 0.1], [0.45, 0.1, 0.2], [0.1, 0.42, 0.1]]])))
    harden_selection(sel, _segs(2, [20, 20, 24]))
    w = torch.sigmoid(sel.logits)
    assert w[0].round().tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]
    # row 1 selected nothing above 0.5: its strongest pairs (within 10 % of 0.45) stay
    assert w[1].round().tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert float(sel.logits.max()) == HARD_LOGIT and not sel.logits.requires_grad


def test_hardening_leaves_segments_the_images_lack_as_training_left_them() -> None:
    sel = SegmentSelector(LAYERS, 3)
    with torch.no_grad():
        sel.logits.fill_(0.7)
    harden_selection(sel, _segs(1, [32, 32, 0]))
    assert torch.equal(sel.logits[0, :, 2], torch.full((LAYERS,), 0.7))
    assert float(sel.logits[0, :, :2].min()) == HARD_LOGIT


def test_on_a_tie_the_larger_region_wins() -> None:
    judge = _judge(1, [30, 24], [[1.0, 1.0]])
    kept, report = contest_regions(judge, SegmentSelector(LAYERS, 2), _direction(1),
                                   torch.ones(1, LAYERS, 2, dtype=torch.bool))
    assert report[0]["losses"][0] == report[0]["losses"][1] and report[0]["winner"] == 0
    assert kept[0].amax(0).tolist() == [True, False]


def test_a_region_of_exactly_the_minimum_share_contests() -> None:
    side = 50  # one column of 50 rows is exactly 2 % of the picture
    assert 1 / side == CONTEST_MIN_SHARE
    judge = _judge(1, [30, 24], [[1.0, 5.0, 2.0]])
    seg = torch.zeros(1, 3, side, side)
    seg[:, 0, :, :40] = 1
    seg[:, 1, :, 40:41] = 1
    seg[:, 2, :, 41:] = 1
    judge.segs = seg
    kept, report = contest_regions(judge, SegmentSelector(LAYERS, 3), _direction(1),
                                   torch.ones(1, LAYERS, 3, dtype=torch.bool))
    assert report[0]["pieces"] == [0, 2, 1] and report[0]["winner"] == 1


def test_hardening_keeps_pairs_at_exactly_nine_tenths_of_the_best() -> None:
    sel = SegmentSelector(LAYERS, 3)  # every logit 0: weight 0.5, nothing above 0.5
    sel.gate = torch.tensor([[[1.0, 0.9, 0.8]] * LAYERS])
    harden_selection(sel, _segs(1, [20, 20, 24]))
    assert torch.sigmoid(sel.logits)[0].round().tolist() == [[1, 1, 0]] * LAYERS


def test_a_per_prompt_edit_judges_every_segment_any_of_its_pictures_shows() -> None:
    """Two pictures and a second batch: segment 2 appears in the second picture only, and
    is judged (and pruned) like the others; every batch's pictures count."""
    judge = _judge(2, [32, 32, 0], [[1.0, 0.0, 0.0]], steps=0, mode="per_prompt")
    judge.segs[1, 2, :, :4] = 1
    judge.segs[1, 0, :, :4] = 0
    second = _judge(3, [32, 32, 0], [[1.0, 0.0, 0.0]], steps=0, mode="per_prompt")
    sel = SegmentSelector(LAYERS, 3, init=0.9)
    out = prune_region(judge, sel, _direction(1), more=[second])
    assert out["judged_images"] == 5
    assert out["segments"] == [[0, 1], [0, 2]]
    assert sel.gate[0].amax(0).tolist() == [1.0, 0.0, 0.0]
