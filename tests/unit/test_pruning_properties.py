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
    tolerance = draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9]))
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
    together = prune_selection(active, additive(gains), tolerance, layers=layers)
    for row in range(3):
        alone = prune_selection(active[row:row + 1], additive(gains[row:row + 1]), tolerance,
                                layers=layers)
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
