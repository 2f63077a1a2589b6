"""The region choice on a judge whose losses are known: the large regions' contest (who
wins, what stays allowed, whose direction carries on, what a cancel leaves), pruning's
decision as the selector receives it, and hardening the chosen selection."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from coral_core.editing.config import TrainConfig
from coral_core.editing.directions import GlobalDirection
from coral_core.editing.memory import MemoryPlan
from coral_core.editing.region import (CONTEST_MIN_SHARE, HARD_LOGIT, RegionJudge,
                                       _as_hardened, contest_regions, harden_selection,
                                       prune_region)
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
    """A judge with the real one's contract and known losses. Per image b: loss = 1 - the sum
    over the regions k the gate lets through of power[b or row, k] times the image's mean
    W+ offset (in the generator's units): a direction trained on a more powerful region
    gets further. Rows and per-image results as RegionJudge.loss gives them; the masks it
    is handed must be the ones it made for that selector."""
    power: torch.Tensor | None = None
    calls: int = 0
    recompute_seen: list = field(default_factory=list)
    area_per_share: float = 0.0  # the area cost of a region covering the whole picture

    def masks(self, selector, hardened=False):
        return [selector]

    def area(self, masks, rows):
        """``area_per_share`` times the share of the picture the gate lets through."""
        (selector,) = masks
        on = selector.gate.amax(1)  # [P, K]
        share = self.segs.flatten(2).mean(2)  # [B, K]
        cost = self.area_per_share * (on.expand_as(share) * share).sum(1)
        return cost if rows > 1 else cost[self.judged()].mean(0, keepdim=True)

    def loss(self, selector, masks, direction, rows, recompute=False, per_image=False):
        assert masks == [selector], "a loss judged with another selector's masks"
        self.calls += 1
        self.recompute_seen.append(recompute)
        if isinstance(selector, AttentionSelector):
            on = selector.cluster_gate if selector.cluster_gate is not None \
                else torch.ones(1, self.power.shape[1])
        else:
            gate = selector.gate if selector.gate is not None \
                else torch.ones_like(selector.logits)
            on = gate.amax(1)  # [P, K]
        b = int(self.ws.shape[0])
        move = direction(self.ws).mean((1, 2))  # [B]
        loss = 1 - (on.expand(b, -1) * self.power.expand(b, -1)).sum(1) * move
        if rows > 1:
            return loss
        loss = loss[self.judged()]
        return loss[None] if per_image else loss.mean(0, keepdim=True)


def _judge(rows: int, widths: list[int], power: list[list[float]], steps: int = 5,
           check=None, mode: str = "per_image", images: int | None = None,
           recompute: bool = False, **cfg) -> KnownJudge:
    config = TrainConfig(prompt="p", contest_steps=steps, mode=mode, **cfg)
    G = SimpleNamespace(num_ws=WS, w_dim=WDIM)
    b = images or rows
    return KnownJudge(G=G, cfg=config, ws=torch.zeros(b, WS, WDIM), noise=[], feats=[],
                      segs=_segs(b, widths), image_loss=lambda x: x,
                      memory=MemoryPlan(recompute=recompute, bf16=False), check=check,
                      power=torch.tensor(power))


def _direction(rows: int, scale: float = 1.0) -> GlobalDirection:
    d = GlobalDirection(WS, WDIM, rows=rows, scale=torch.full((WDIM,), scale))
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


def test_hardening_keeps_the_image_s_own_pieces_when_a_lacked_one_was_never_trained() -> None:
    """The image shows segments 0 and 1, trained below 0.5; segment 2 is not in it and sits
    where the selector started. Hardening must keep the image's strongest piece (within a
    tenth of its best), not the untrained segment: that left the region empty, so the edit
    could change nothing."""
    sel = SegmentSelector(LAYERS, 3)
    with torch.no_grad():
        sel.logits.copy_(torch.logit(torch.tensor(
            [[[0.3, 0.2, 0.5], [0.42, 0.1, 0.5], [0.1, 0.4, 0.6]]])))
    lacked = sel.logits[0, :, 2].detach().clone()
    segs = _segs(1, [32, 32, 0])
    with _as_hardened(sel, segs):  # what the region contest judges a candidate by
        judged = torch.sigmoid(sel.logits[0, :, :2]).round()
    harden_selection(sel, segs)
    w = torch.sigmoid(sel.logits)[0]
    assert w[:, :2].round().tolist() == [[0, 0], [1, 0], [0, 1]]
    assert torch.equal(sel.logits[0, :, 2], lacked)  # as training left it
    assert torch.equal(judged, w[:, :2].round())


def test_on_a_tie_the_larger_region_wins() -> None:
    judge = _judge(1, [30, 24], [[1.0, 1.0]])
    kept, report = contest_regions(judge, SegmentSelector(LAYERS, 2), _direction(1),
                                   torch.ones(1, LAYERS, 2, dtype=torch.bool))
    assert report[0]["losses"][0] == report[0]["losses"][1] and report[0]["winner"] == 0
    assert kept[0].amax(0).tolist() == [True, False]


def test_on_a_near_tie_the_region_that_costs_less_area_wins() -> None:
    """The CLIP gains of a large and a small region differ by less than the larger one's
    extra area costs the training objective: the small one wins, unless the contest is told
    to judge by the CLIP alone."""
    judge = _judge(1, [40, 10], [[1.02, 1.0]])
    judge.area_per_share = 0.1
    kept, report = contest_regions(judge, SegmentSelector(LAYERS, 2), _direction(1),
                                   torch.ones(1, LAYERS, 2, dtype=torch.bool))
    assert report[0]["winner"] == 1 and kept[0].amax(0).tolist() == [False, True]
    clip_alone = _judge(1, [40, 10], [[1.02, 1.0]], contest_counts_area=False)
    clip_alone.area_per_share = 0.1
    _, report = contest_regions(clip_alone, SegmentSelector(LAYERS, 2), _direction(1),
                                torch.ones(1, LAYERS, 2, dtype=torch.bool))
    assert report[0]["winner"] == 0


def test_a_region_s_area_cost_is_the_training_s_area_term() -> None:
    from coral_core.editing.losses import area_betas

    cfg = TrainConfig(prompt="p")
    G = SimpleNamespace(num_ws=4, w_dim=WDIM, conv_layers=[SimpleNamespace(resolution=r)
                                                           for r in (4, 8, 8)])
    judge = RegionJudge(G=G, cfg=cfg, ws=torch.zeros(2, 4, WDIM), noise=[], feats=[],
                        segs=_segs(2, [32, 32]), image_loss=lambda x: x,
                        memory=MemoryPlan(recompute=False, bf16=False),
                        fits=torch.tensor([1.0, 0.0]))
    masks = [torch.ones(2, 1, 4, 4), None, torch.zeros(2, 1, 8, 8)]
    masks[2][0, :, :4] = 1.0  # image 0: half of the last layer; image 1: none of it
    betas = area_betas(G, cfg.weights)
    want = cfg.weights.area * torch.tensor([betas[0] + betas[2] / 2, betas[0]])
    assert torch.allclose(judge.area(masks, rows=2), want)
    assert torch.allclose(judge.area(masks, rows=1), want[:1])  # the judged image only


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


def test_rivals_train_at_the_run_s_rate_in_the_generator_s_units_and_memory_options() -> None:
    """Two rivals of 5 Adam steps at the global rate (0.05) from an offset of 0.1: the
    winner's offset has moved about 5 x 0.05; the loss reads the offset scaled by the
    direction's w spread, so a rival that lost the scale would score differently."""
    judge = _judge(1, [32, 32], [[1.0, 2.0]], steps=5, recompute=True)
    direction = _direction(1, scale=1 / 3)
    _, report = contest_regions(judge, SegmentSelector(LAYERS, 2), direction,
                                torch.ones(1, LAYERS, 2, dtype=torch.bool))
    moved = float(direction.delta.detach().mean()) - 0.1
    assert moved == pytest.approx(5 * TrainConfig(prompt="p").direction_lr(), rel=0.05)
    assert report[0]["losses"][1] == pytest.approx(1 - 2.0 / 3 * (0.1 + moved), abs=1e-3)
    assert all(loss == round(loss, 4) for loss in report[0]["losses"])
    assert report[0]["losses"][0] != round(report[0]["losses"][0])
    assert judge.recompute_seen[:5] == [True] * 5  # training steps use the run's option


def test_rows_with_fewer_large_regions_stop_contesting_when_theirs_run_out() -> None:
    judge = _judge(2, [24, 24, 8, 1], [[1.0, 3.0, 0.5, 0.0], [1.0, 2.0, 9.0, 9.0]])
    allowed = torch.ones(2, LAYERS, 4, dtype=torch.bool)
    allowed[1, :, 2] = False  # row 1: two large regions; its others must never contest
    _, report = contest_regions(judge, SegmentSelector(LAYERS, 4, rows=2), _direction(2),
                                allowed)
    assert report[1]["pieces"] == [0, 1] and len(report[1]["losses"]) == 2
    assert report[1]["winner"] == 1 and report[0]["winner"] == 1


def test_a_per_prompt_edit_s_regions_contest_by_their_mean_share_of_its_pictures() -> None:
    """Segment 2 is 3 % of picture 0 and absent from picture 1: 1.5 % on average, under the
    2 % a region needs to contest."""
    judge = _judge(1, [32, 30, 2], [[1.0, 2.0, 9.0]], images=2, mode="per_prompt")
    judge.segs[1, 2] = 0
    judge.segs[1, 1, :, 30:32] = 1
    _, report = contest_regions(judge, SegmentSelector(LAYERS, 3), _direction(1),
                                torch.ones(1, LAYERS, 3, dtype=torch.bool))
    assert report[0]["pieces"] == [0, 1] and report[0]["winner"] == 1


def test_pruning_runs_the_contest_first_when_it_is_on() -> None:
    judge = _judge(1, [32, 32], [[1.0, 2.0]], steps=1)
    sel = SegmentSelector(LAYERS, 2, init=0.9)
    out = prune_region(judge, sel, _direction(1))
    assert out["contest"][0]["winner"] == 1 and out["segments"] == [[0, 0]]
    assert sel.gate[0].amax(0).tolist() == [0.0, 1.0]
    assert "contest" not in prune_region(_judge(1, [32, 32], [[1.0, 2.0]], steps=0),
                                         SegmentSelector(LAYERS, 2, init=0.9), _direction(1))


def test_whole_layers_are_pruning_units_only_when_asked() -> None:
    """This judge reads a region as acting if any layer lets it through, so with layers as
    units all but the last layer go (the first first); without, no layer is a unit."""
    for prune_layers, removed in ((False, []), (True, [[0, 0], [0, 1]])):
        judge = _judge(1, [32, 32], [[1.0, 0.0]], steps=0, prune_layers=prune_layers,
                       prune_tolerance=0.5)
        sel = SegmentSelector(LAYERS, 2, init=0.9)
        out = prune_region(judge, sel, _direction(1))
        assert out["layers"] == removed, prune_layers
        assert out["segments"] == [[0, 1]]


def test_a_per_prompt_edit_keeps_a_region_one_of_its_pictures_needs() -> None:
    """Picture 1's whole gain is segment 1; by the mean it could go, but the per-picture
    guard of a per-prompt edit keeps it (a per-image edit has no such guard)."""
    power = [[1.0, 0.0, 0.0], [0.0, 0.4, 0.0], [1.0, 0.0, 0.0]]
    judge = _judge(1, [30, 30, 4], power, steps=0, mode="per_prompt", images=3)
    sel = SegmentSelector(LAYERS, 3, init=0.9)
    prune_region(judge, sel, _direction(1))
    assert sel.gate[0].amax(0).tolist() == [1.0, 1.0, 0.0]
    unguarded = _judge(1, [30, 30, 4], power, steps=0, mode="per_prompt", images=3,
                       prune_image_keep=0.0)
    sel = SegmentSelector(LAYERS, 3, init=0.9)
    prune_region(unguarded, sel, _direction(1))
    assert sel.gate[0].amax(0).tolist() == [1.0, 0.0, 0.0]


def test_a_one_pixel_segment_is_judged_and_one_a_row_s_image_lacks_is_not() -> None:
    judge = _judge(2, [32, 31, 1], [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], steps=0)
    judge.segs[0, 2] = 0          # picture 0 lacks segment 2 (its column joins segment 1)
    judge.segs[0, 1, :, 31:] = 1
    judge.segs[1, 2] = 0
    judge.segs[1, 2, 5, 63] = 1   # picture 1 shows it on a single pixel
    judge.segs[1, 1, 5, 63] = 0
    sel = SegmentSelector(LAYERS, 3, rows=2, init=0.9)
    prune_region(judge, sel, _direction(2))
    assert sel.gate[0].amax(0).tolist() == [1.0, 0.0, 1.0]  # absent: left to training
    assert sel.gate[1].amax(0).tolist() == [1.0, 0.0, 0.0]  # one pixel: judged, pruned


def test_an_attention_edit_judged_on_several_batches_of_several_pictures() -> None:
    judge = _judge(1, [32, 32], [[1.0, 0.01]], steps=0, mode="per_prompt", images=2)
    second = _judge(1, [32, 32], [[1.0, 0.01]], steps=0, mode="per_prompt", images=3)
    sel = AttentionSelector([4, 4, 4])
    out = prune_region(judge, sel, _direction(1), more=[second])
    assert sel.cluster_gate.tolist() == [[1.0, 0.0]] and out["judged_images"] == 5


def test_hardening_a_per_prompt_selection_over_several_pictures() -> None:
    sel = SegmentSelector(LAYERS, 3)
    with torch.no_grad():
        sel.logits.copy_(torch.tensor([[[2.0, -2.0, 0.5]] * LAYERS]))
    segs = _segs(2, [20, 20, 24])
    segs[0, 2] = 0  # segment 2 in the second picture only: still decided
    harden_selection(sel, segs)
    assert torch.sigmoid(sel.logits)[0].round().tolist() == [[1, 0, 1]] * LAYERS


def test_hardening_leaves_a_row_gated_to_nothing_with_nothing() -> None:
    sel = SegmentSelector(LAYERS, 3, rows=2)
    sel.gate = torch.zeros(2, LAYERS, 3)
    sel.gate[1, :, 0] = 1.0
    harden_selection(sel, _segs(2, [20, 20, 24]))
    assert float(torch.sigmoid(sel.logits[0]).max()) == 0.0
    assert torch.sigmoid(sel.logits[1]).round().tolist() == [[1, 0, 0]] * LAYERS


def test_a_per_image_edit_of_one_picture_has_no_per_picture_guard() -> None:
    """``prune_image_keep`` belongs to per-prompt edits: a per-image edit of one picture is
    pruned by its tolerance alone, even under a guard that would keep more."""
    for mode, kept in (("per_image", [1.0, 0.0]), ("per_prompt", [1.0, 1.0])):
        judge = _judge(1, [32, 32], [[0.75, 0.25]], steps=0, mode=mode,
                       prune_image_keep=0.9)
        sel = SegmentSelector(LAYERS, 2, init=0.9)
        prune_region(judge, sel, _direction(1))
        assert sel.gate[0].amax(0).tolist() == kept, mode


@dataclass
class StrengthJudge(RegionJudge):
    """The real judge's masks (RegionJudge.masks) with a loss that reads them: per image,
    1 - the sum over segments k of power[k] times the segment's mask strength summed over
    the layers, times the mean W+ offset. A region's score thus depends on how strongly its
    masks act, as a CLIP's does on how much of the change the blend lets through."""
    power: torch.Tensor | None = None

    def loss(self, selector, masks, direction, rows, recompute=False, per_image=False):
        segs = self.segs.float()
        strength = sum((m * segs).flatten(2).sum(2) / segs.flatten(2).sum(2).clamp_min(1)
                       for m in masks if m is not None)  # [B, K]
        move = direction(self.ws).mean((1, 2))
        loss = 1 - (strength * self.power).sum(1) * move
        return loss if rows > 1 else loss.mean(0, keepdim=True)


def _strength_judge(**cfg) -> StrengthJudge:
    config = TrainConfig(prompt="p", contest_steps=5, contest_counts_area=False, **cfg)
    G = SimpleNamespace(num_ws=WS, w_dim=WDIM, conv_layers=[
        SimpleNamespace(index=i + 1, resolution=RES) for i in range(LAYERS)])
    return StrengthJudge(G=G, cfg=config, ws=torch.zeros(1, WS, WDIM), noise=[], feats=[],
                         segs=_segs(1, [32, 32]), image_loss=lambda x: x,
                         memory=MemoryPlan(recompute=False, bf16=False),
                         power=torch.tensor([[1.5, 0.6]]))


def _soft_selection() -> SegmentSelector:
    """Segment 0 strong at one layer (0.9, 0.05, 0.05): hardened, that one layer; segment 1
    just past half at every layer (0.55 each): hardened, all three at full strength."""
    sel = SegmentSelector(LAYERS, 2)
    with torch.no_grad():
        sel.logits.copy_(torch.logit(torch.tensor([[[0.9, 0.55], [0.05, 0.55],
                                                    [0.05, 0.55]]])))
    return sel


def test_the_contest_judges_each_region_as_hardening_will_leave_it() -> None:
    """Soft, segment 0 scores 1.5 x 1.0 against segment 1's 0.6 x 1.65; hardened as the user
    gets them, 1.5 x 1 against 0.6 x 3: segment 1 wins, and only when the contest judges the
    hardened masks. The selector itself is left as training left it."""
    sel = _soft_selection()
    before = sel.logits.detach().clone()
    allowed = torch.ones(1, LAYERS, 2, dtype=torch.bool)
    _, report = contest_regions(_strength_judge(), sel, _direction(1), allowed)
    assert report[0]["winner"] == 1
    assert torch.equal(sel.logits.detach(), before) and sel.logits.requires_grad
    _, soft = contest_regions(_strength_judge(contest_hardened=False), _soft_selection(),
                              _direction(1), allowed)
    assert soft[0]["winner"] == 0
    _, no_hardening = contest_regions(_strength_judge(harden_selection=False),
                                      _soft_selection(), _direction(1), allowed)
    assert no_hardening[0]["winner"] == 0  # soft masks to the end: judged soft


def test_the_hardened_masks_are_exactly_those_hardening_sets() -> None:
    judge = _strength_judge()
    sel = _soft_selection()
    sel.gate = torch.ones(1, LAYERS, 2)
    sel.gate[0, 2, 1] = 0  # a pair pruning removed stays off
    seen = judge.masks(sel, hardened=True)
    soft = judge.masks(sel)
    harden_selection(sel, judge.segs)
    assert all(torch.equal(a, b) for a, b in zip(seen, judge.masks(sel)))
    assert not all(torch.equal(a, b) for a, b in zip(seen, soft))
    assert float(seen[2][..., 32:].max()) == 0.0


def test_a_named_piece_wins_the_contest_and_trains_in_every_round() -> None:
    """Row 0 names its weaker piece: it wins, trains in both rounds (each going on from the
    last, so its loss falls round by round), and the other large piece is switched off (the
    small strip stays for pruning); row 1 names nothing and its contest runs as before."""
    judge = _judge(2, [24, 24, 1], [[3.0, 1.0, 0.5], [3.0, 1.0, 0.5]])
    judge.named = [1, None]
    allowed = torch.ones(2, LAYERS, 3, dtype=torch.bool)
    direction = _direction(2)
    kept, report = contest_regions(judge, SegmentSelector(LAYERS, 3, rows=2), direction,
                                   allowed)
    assert report[0] == {"row": 0, "pieces": [1], "losses": report[0]["losses"], "winner": 1,
                         "named": True}
    first, second = report[0]["losses"]
    assert second < first and len(report[1]["losses"]) == 2
    assert float(direction.delta[0].detach().mean()) > float(direction.delta[1].detach().mean())
    assert report[1]["winner"] == 0 and "named" not in report[1]
    assert kept[0].amax(0).tolist() == [False, True, True]
    assert kept[1].amax(0).tolist() == [True, False, True]


def test_a_named_piece_decides_only_when_it_is_a_large_allowed_piece_and_asked_to() -> None:
    allowed = torch.ones(1, LAYERS, 3, dtype=torch.bool)
    small = _judge(1, [30, 30, 1], [[3.0, 1.0, 9.0]])
    small.named = [2]  # under the contest's least share: the contest decides
    _, report = contest_regions(small, SegmentSelector(LAYERS, 3), _direction(1), allowed)
    assert report[0]["winner"] == 0 and "named" not in report[0]
    off = _judge(1, [30, 30, 1], [[3.0, 1.0, 9.0]], locate_named=False)
    off.named = [1]
    _, report = contest_regions(off, SegmentSelector(LAYERS, 3), _direction(1), allowed)
    assert report[0]["winner"] == 0
    alone = _judge(1, [62, 1, 1], [[3.0, 1.0, 1.0]])
    alone.named = [0]  # the only large piece: nothing to decide
    kept, report = contest_regions(alone, SegmentSelector(LAYERS, 3), _direction(1), allowed)
    assert report is None and torch.equal(kept, allowed)


def test_pruning_offers_the_named_piece_though_training_never_selected_it() -> None:
    judge = _judge(1, [32, 32], [[1.0, 2.0]], steps=3)
    judge.named = [1]
    sel = SegmentSelector(LAYERS, 2)
    with torch.no_grad():
        sel.logits[0, :, 0] = 5.0    # training chose piece 0 only
        sel.logits[0, :, 1] = -5.0
    out = prune_region(judge, sel, _direction(1))
    assert out["contest"][0]["winner"] == 1 and out["contest"][0]["named"]
    assert out["segments"] == [[0, 0]]
