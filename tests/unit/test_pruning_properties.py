"""Region pruning's promises, for any selection and any additive CLIP gain (hypothesis).

What a user relies on, whatever the scene: pruning never switches on what was off, never
leaves an edit with less than ``1 - tolerance`` of its gain, leaves an edit with no gain (or
none yet) exactly as it was, stops only when no further unit could go, and treats each
image (row) on its own."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coral_core.editing.pruning import prune_selection


def additive(gains: torch.Tensor):
    """CLIP loss per row = 1 - the sum of the kept (layer, segment) gains."""
    def score(gate: torch.Tensor) -> torch.Tensor:
        return 1 - (gate * gains).flatten(1).sum(1)
    return score


@st.composite
def selections(draw, rows: int | None = None):
    p = rows or draw(st.integers(1, 3))
    layers, segments = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    n = p * layers * segments
    # gains on a coarse grid (exact sums), some zero, some negative
    gains = torch.tensor(draw(st.lists(st.integers(-2, 10), min_size=n, max_size=n)),
                         dtype=torch.float64).reshape(p, layers, segments) / 16
    active = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))
                          ).reshape(p, layers, segments)
    tolerance = draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]))
    return active, gains, tolerance


def _gain(gate: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    return (gate.to(gains.dtype) * gains).flatten(1).sum(1)


def _removals(keep: torch.Tensor, layers: bool) -> list[torch.Tensor]:
    """Every gate one unit smaller than ``keep`` [L, K] that still selects something."""
    out = []
    units = [(None, k) for k in range(keep.shape[1])]
    units += [(i, None) for i in range(keep.shape[0])] if layers else []
    for layer, seg in units:
        trial = keep.clone()
        if seg is not None:
            trial[:, seg] = False
        else:
            trial[layer, :] = False
        if bool((trial != keep).any()) and bool(trial.any()):
            out.append(trial)
    return out


@settings(max_examples=150, deadline=None)
@given(selections(), st.booleans())
def test_pruning_keeps_the_gain_it_promises_and_stops_only_when_nothing_more_can_go(
        case, layers) -> None:
    active, gains, tolerance = case
    gate = prune_selection(active, additive(gains), tolerance, layers=layers).bool()
    assert gate.shape == active.shape
    assert not bool((gate & ~active).any())  # never switches on what was off
    full, kept = _gain(active, gains), _gain(gate, gains)
    for row in range(active.shape[0]):
        if not float(full[row]) > 0:  # no gain to measure: the selection is left as it was
            assert torch.equal(gate[row], active[row])
            continue
        assert float(kept[row]) >= (1 - tolerance) * float(full[row]) - 1e-9
        assert bool(gate[row].any())  # an edit with a gain always keeps something
        # greedy to the end: no single further removal would stay within the tolerance
        for trial in _removals(gate[row], layers):
            assert float(_gain(trial[None], gains[row:row + 1])) < \
                (1 - tolerance) * float(full[row]) - 1e-12


@settings(max_examples=60, deadline=None)
@given(selections(rows=3), st.booleans())
def test_each_row_is_pruned_as_if_it_were_alone(case, layers) -> None:
    active, gains, tolerance = case
    _assert_rows_alone(active, gains, additive, tolerance, layers=layers)


def _assert_rows_alone(active, gains, score_of, tolerance, **options) -> None:
    """Pruning all rows at once gives each row what pruning it alone gives."""
    together = prune_selection(active, score_of(gains), tolerance, **options)
    for row in range(active.shape[0]):
        alone = prune_selection(active[row:row + 1], score_of(gains[row:row + 1]), tolerance,
                                **options)
        assert torch.equal(together[row], alone[0])


def test_an_edit_whose_gain_is_exactly_zero_is_left_as_it_was() -> None:
    """Full and empty selection score alike: nothing to measure, so nothing is removed
    (removing a unit would cost nothing, and a pruner that took that for a licence would
    strip the edit to one unit)."""
    active = torch.ones(1, 2, 3, dtype=torch.bool)
    gains = torch.tensor([[[0.1, -0.1, 0.0], [0.0, 0.0, 0.0]]])
    gate = prune_selection(active, additive(gains), tolerance=0.3)
    assert gate.bool().tolist() == active.tolist()


def test_layer_units_cover_every_layer_when_layers_and_segments_differ_in_number() -> None:
    """Five layers, two segments: the fourth layer carries nothing and goes; the rest stay."""
    gains = torch.tensor([[[0.2, 0.0], [0.2, 0.0], [0.2, 0.0], [0.0, 0.0], [0.2, 0.0]]])
    active = torch.ones(1, 5, 2, dtype=torch.bool)
    gate = prune_selection(active, additive(gains), tolerance=0.05, layers=True)
    assert gate[0].tolist() == [[1, 0], [1, 0], [1, 0], [0, 0], [1, 0]]


def test_a_removal_that_lands_exactly_on_the_tolerance_is_taken() -> None:
    """Gain 0.5 with tolerance 0.5: the edit may keep exactly 0.25, so the unit worth 0.25
    goes (and then nothing more can)."""
    gains = torch.tensor([[[0.25, 0.25]]], dtype=torch.float64)
    gate = prune_selection(torch.ones(1, 1, 2, dtype=torch.bool), additive(gains), 0.5)
    assert gate[0, 0].tolist() == [0, 1] or gate[0, 0].tolist() == [1, 0]


def test_at_tolerance_zero_a_unit_worth_nothing_goes() -> None:
    """Found by hypothesis: with no tolerance, a segment that adds no gain on any judged
    image is still dropped (the bound used to round one ulp below the full edit's loss)."""
    gains = torch.tensor([[[[0.0, 0.5625]], [[0.0, 0.625]], [[0.0, 0.625]]]],
                         dtype=torch.float64)
    gate = prune_selection(torch.ones(1, 1, 2, dtype=torch.bool), per_image(gains), 0.0)
    assert gate[0, 0].tolist() == [0, 1]


# ---- per-prompt edits: a loss per judged image, and the guard for each image's own gain

def per_image(gains: torch.Tensor):
    """Loss per row and image = 1 - the kept units' gains on that image (gains [P, N, L, K])."""
    def score(gate: torch.Tensor) -> torch.Tensor:
        return 1 - torch.einsum("plk,pnlk->pn", gate.to(gains.dtype), gains)
    return score


@st.composite
def per_image_selections(draw, rows: int | None = None):
    p = rows or draw(st.integers(1, 3))
    n, layers, segments = draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    size = p * n * layers * segments
    gains = torch.tensor(draw(st.lists(st.integers(-2, 10), min_size=size, max_size=size)),
                         dtype=torch.float64).reshape(p, n, layers, segments) / 16
    active = torch.tensor(draw(st.lists(st.booleans(), min_size=p * layers * segments,
                                        max_size=p * layers * segments))
                          ).reshape(p, layers, segments)
    tolerance = draw(st.sampled_from([0.0, 0.25, 0.5, 0.9]))
    image_keep = draw(st.sampled_from([0.0, 0.25, 0.5, 0.75]))
    return active, gains, tolerance, image_keep


def _image_gains(gate: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """[N]: each image's gain under ``gate`` [L, K] (gains [N, L, K])."""
    return torch.einsum("lk,nlk->n", gate.to(gains.dtype), gains)


def _acceptable(trial: torch.Tensor, gains: torch.Tensor, tolerance: float,
                image_keep: float, full: torch.Tensor) -> bool:
    """Whether a gate [L, K] keeps what pruning promises for one row (gains [N, L, K]):
    ``1 - tolerance`` of the mean gain, and ``image_keep`` of each guarded image's own."""
    kept = _image_gains(trial, gains)
    if float(kept.mean()) < (1 - tolerance) * float(full.mean()) - 1e-12:
        return False
    if image_keep <= 0:
        return True
    guarded = (full > 0) & (full >= 0.5 * full.mean())
    return bool(((kept >= image_keep * full - 1e-12) | ~guarded).all())


@settings(max_examples=150, deadline=None)
@given(per_image_selections())
def test_a_per_prompt_edit_keeps_every_guarded_picture_s_share_and_stops_at_the_end(case):
    active, gains, tolerance, image_keep = case
    gate = prune_selection(active, per_image(gains), tolerance,
                           image_keep=image_keep).bool()
    assert not bool((gate & ~active).any())
    for row in range(active.shape[0]):
        full = _image_gains(active[row], gains[row])
        if not float(full.mean()) > 0:
            assert torch.equal(gate[row], active[row])
            continue
        assert _acceptable(gate[row], gains[row], tolerance, image_keep, full)
        for trial in _removals(gate[row], layers=False):
            assert not _acceptable(trial, gains[row], tolerance, image_keep, full)


@settings(max_examples=60, deadline=None)
@given(per_image_selections(rows=3))
def test_per_prompt_rows_are_pruned_as_if_alone(case) -> None:
    active, gains, tolerance, image_keep = case
    _assert_rows_alone(active, gains, per_image, tolerance, image_keep=image_keep)


def test_a_picture_gaining_exactly_half_the_mean_is_guarded() -> None:
    """Picture 0 gains 0.25, picture 1 0.75 (mean 0.5: picture 0 is at exactly half of it,
    the guard's bound). Segment 1 is all of picture 0's gain; by the mean it could go."""
    gains = torch.tensor([[[[0.0, 0.25, 0.0]], [[0.75, 0.0, 0.0]]]], dtype=torch.float64)
    active = torch.ones(1, 1, 3, dtype=torch.bool)
    assert prune_selection(active, per_image(gains), tolerance=0.5)[0, 0].tolist() == [1, 0, 0]
    guarded = prune_selection(active, per_image(gains), tolerance=0.5, image_keep=0.5)
    assert guarded[0, 0].tolist() == [1, 1, 0]


def test_a_picture_may_keep_exactly_its_share() -> None:
    """Without segment 1 picture 0 keeps 0.125 of its 0.25: exactly ``image_keep`` 0.5."""
    gains = torch.tensor([[[[0.125, 0.125, 0.0]], [[0.5, 0.25, 0.0]]]], dtype=torch.float64)
    active = torch.ones(1, 1, 3, dtype=torch.bool)
    gate = prune_selection(active, per_image(gains), tolerance=0.5, image_keep=0.5)
    assert gate[0, 0].tolist() == [1, 0, 0]
    strict = prune_selection(active, per_image(gains), tolerance=0.5, image_keep=0.6)
    assert strict[0, 0].tolist() == [1, 1, 0]


def test_without_per_image_losses_the_guard_changes_nothing() -> None:
    gains = torch.tensor([[[0.5, 0.05, 0.1]]])
    active = torch.ones(1, 1, 3, dtype=torch.bool)
    plain = prune_selection(active, additive(gains), 0.3)
    assert torch.equal(prune_selection(active, additive(gains), 0.3, image_keep=0.9), plain)


def test_image_keep_zero_is_the_mean_alone_even_when_a_picture_would_get_worse() -> None:
    """Segment 1 helps picture 0 and harms picture 1 a little; by the mean it goes, and with
    ``image_keep`` 0 no picture is guarded (picture 1 would be left worse than unedited by
    keeping it, and picture 0 keeps none of its gain: both allowed)."""
    gains = torch.tensor([[[[0.0, 0.3]], [[0.8, -0.1]]]], dtype=torch.float64)  # [1, 2, 1, 2]
    active = torch.ones(1, 1, 2, dtype=torch.bool)
    mean_only = prune_selection(active, per_image(gains), tolerance=0.4)
    assert mean_only[0, 0].tolist() == [1, 0]
    assert torch.equal(prune_selection(active, per_image(gains), tolerance=0.4,
                                       image_keep=0.0), mean_only)
    assert prune_selection(active, per_image(gains), tolerance=0.4,
                           image_keep=0.5)[0, 0].tolist() == [1, 1]


def test_by_default_only_whole_segments_are_units() -> None:
    gains = torch.tensor([[[0.02, 0.01], [0.60, 0.00]]])  # layer 0 adds little
    allowed = torch.ones(1, 2, 2, dtype=torch.bool)
    assert prune_selection(allowed, additive(gains), 0.2)[0].tolist() == [[1, 0], [1, 0]]


def test_of_equally_useful_units_the_first_goes_first() -> None:
    """Deterministic: the same selection always prunes the same way (lower segment first)."""
    gains = torch.tensor([[[0.5, 0.25, 0.25]]])
    gate = prune_selection(torch.ones(1, 1, 3, dtype=torch.bool), additive(gains), 0.3)
    assert gate[0, 0].tolist() == [1, 0, 1]


def test_image_keep_zero_guards_no_picture_even_one_left_worse_than_unedited() -> None:
    """Segment 1 is most of picture 0's gain and offsets its loss from segment 0; by the mean
    it may go (picture 0 then ends worse than unedited), and ``image_keep`` 0 guards nothing."""
    gains = torch.tensor([[[[-0.2, 0.6]], [[1.0, 0.0]]]], dtype=torch.float64)
    active = torch.ones(1, 1, 2, dtype=torch.bool)
    assert prune_selection(active, per_image(gains), 0.5, image_keep=0.0)[0, 0].tolist() == \
        [1, 0]
    assert prune_selection(active, per_image(gains), 0.5, image_keep=0.1)[0, 0].tolist() == \
        [1, 1]


def test_each_row_s_pictures_are_guarded_by_that_row_s_own_gains() -> None:
    """Row 1's gains are a hundredth of row 0's; alone, its picture 0 (half its mean gain or
    more) is guarded and keeps segment 1; so it must be beside row 0."""
    row = torch.tensor([[[[0.0, 0.6]], [[1.0, 0.0]]]], dtype=torch.float64)  # [1, 2, 1, 2]
    gains = torch.cat([row * 10, row / 10])
    active = torch.ones(2, 1, 2, dtype=torch.bool)
    alone = prune_selection(active[1:], per_image(gains[1:]), 0.5, image_keep=0.5)
    together = prune_selection(active, per_image(gains), 0.5, image_keep=0.5)
    assert alone[0, 0].tolist() == [1, 1] and torch.equal(together[1], alone[0])
