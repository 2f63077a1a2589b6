"""A held edit that falls short is trained again free (TrainConfig.free_when_short): what a
user's --hold-to-prior run gives, saves and applies when some or all of its images end short
of the prompt."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from coral_core.editing import fit
from coral_core.editing.apply import apply_edits
from coral_core.editing.edit import Edit
from coral_core.editing.fit import PromptFit
from coral_core.errors import CancelledError
from coral_core.progress import Reporter
from coral_core.editing.trainer import TrainConfig, train_edit

SHORT_WARNING = "of the way to the generator's best pictures"


def _short_on(monkeypatch: pytest.MonkeyPatch, rows: set[int]) -> None:
    """The CLIP's verdict, fixed: a held edit gets nowhere on ``rows`` and all the way on
    the others; a free edit gets all the way everywhere."""
    monkeypatch.setattr(fit, "MIN_REACH", 0.5)

    def reach(self: PromptFit, text: torch.Tensor, edited: torch.Tensor) -> list[float]:
        held = not self.covered and _training_held[0]
        return [0.0 if held and i in rows else 1.0 for i in range(edited.shape[0])]

    monkeypatch.setattr(PromptFit, "reach", reach)


_training_held = [True]


def _config(**changes: Any) -> TrainConfig:
    common: dict[str, Any] = dict(prompt="a red background", steps=4, seed=3,
                                  prior_samples=32, prior_top=4, along_prior=True,
                                  prune_at=0.5, contest_steps=1, free_when_short=True,
                                  # the random generator's start repaints every piece: the
                                  # old split keeps two large pieces to contest the region
                                  prior_region_graded=1.0)
    return TrainConfig(**{**common, **changes})


@pytest.fixture
def held_then_free(monkeypatch: pytest.MonkeyPatch):
    """Tell the fake verdict whether the run being judged holds the direction."""
    import coral_core.editing.trainer as trainer

    once = trainer._train_once

    def spy(G, clip, cfg, *args, **kwargs):
        _training_held[0] = cfg.along_prior
        return once(G, clip, cfg, *args, **kwargs)

    monkeypatch.setattr(trainer, "_train_once", spy)
    yield
    _training_held[0] = True


def test_the_image_that_fell_short_gets_the_free_edit_and_the_other_keeps_the_held_one(
        G, clip, tmp_path, monkeypatch, held_then_free) -> None:
    _short_on(monkeypatch, {1})
    ws = G.mapping_ws(G.z_from_seeds([3, 4]))
    cfg = _config(batch=2, catalogue_dir=tmp_path)
    edit = train_edit(G, clip, cfg, latents=ws).edit
    assert edit.then is not None and edit.then.prompt == edit.prompt
    assert edit.info["prior"]["trained_again_free"] == [1]
    assert edit.info["wall_seconds"] == edit.then.info["wall_seconds"] >= \
        edit.then.info["prior"]["held_first"]["wall_seconds"]  # both trainings counted
    assert not any(SHORT_WARNING in w for w in edit.info.get("warnings", []))
    assert "clauses" not in edit.summary()

    held_alone = apply_edits(G, ws, [Edit.load(edit.save(tmp_path / "e.safetensors"))])
    res = apply_edits(G, ws, [edit])
    assert torch.equal(held_alone.edited, res.edited)  # the file applies as trained
    assert len(res.masks) == 1 and len(res.prompts) == 1  # one thing named, one mask set

    monkeypatch.setattr(fit, "MIN_REACH", float("-inf"))  # nothing short: the plain runs
    # held to the end, every step run: a freed image cancels the contest's credit of steps
    only_held = train_edit(G, clip, _config(batch=2, catalogue_dir=tmp_path,
                                            free_when_short=False, credit_contest=False),
                           latents=ws).edit
    only_free = train_edit(G, clip, _config(batch=2, catalogue_dir=tmp_path,
                                            along_prior=False), latents=ws).edit
    held_img = apply_edits(G, ws, [only_held]).edited
    free_img = apply_edits(G, ws, [only_free]).edited
    assert not torch.equal(held_img[0], free_img[0])  # the two edits differ, so the test can
    assert torch.allclose(res.edited[0], held_img[0], atol=1e-5)  # which edit each image got
    # image 1 as the free edit alone draws it (up to the rounding of another batch's blend)
    assert torch.allclose(res.edited[1], free_img[1], atol=1e-5)
    assert not torch.allclose(held_img[1], free_img[1], atol=1e-2)


def test_when_every_image_fell_short_the_free_edit_is_the_edit(
        G, clip, tmp_path, monkeypatch, held_then_free) -> None:
    _short_on(monkeypatch, {0})
    ws = G.mapping_ws(G.z_from_seeds([5]))
    edit = train_edit(G, clip, _config(batch=1, catalogue_dir=tmp_path), latents=ws).edit
    assert edit.then is None and edit.segments is None  # no split: the defaults' segments
    tried = edit.info["prior"]["held_first"]
    assert tried["short"] == [0] and tried["reach"] == [0.0]
    assert edit.info["wall_seconds"] >= tried["wall_seconds"]
    monkeypatch.setattr(fit, "MIN_REACH", float("-inf"))
    free = train_edit(G, clip, _config(batch=1, catalogue_dir=tmp_path, along_prior=False),
                      latents=ws).edit
    assert torch.equal(apply_edits(G, ws, [edit]).edited, apply_edits(G, ws, [free]).edited)


def test_by_default_a_held_image_that_fell_short_is_trained_again_and_without_it_kept_as_was(
        G, clip, tmp_path, monkeypatch, held_then_free) -> None:
    _short_on(monkeypatch, {0})
    ws = G.mapping_ws(G.z_from_seeds([5]))
    defaults = TrainConfig("p")
    again = train_edit(G, clip, _config(batch=1, catalogue_dir=tmp_path,
                                        free_when_short=defaults.free_when_short,
                                        free_below=defaults.free_below), latents=ws).edit
    assert again.info["prior"]["held_first"]["short"] == [0]
    edit = train_edit(G, clip, _config(batch=1, catalogue_dir=tmp_path,
                                       free_when_short=False), latents=ws).edit
    res = apply_edits(G, ws, [edit])
    assert edit.then is None and "held_first" not in edit.info["prior"]
    assert torch.equal(res.edited, res.original)
    assert any(SHORT_WARNING in w for w in edit.info["warnings"])


def test_a_cancelled_held_run_is_not_trained_again(G, clip, tmp_path, monkeypatch,
                                                   held_then_free) -> None:
    _short_on(monkeypatch, {0})
    ws = G.mapping_ws(G.z_from_seeds([5]))
    calls = []

    def cancel_at_step_one(step: int, total: int, info: dict) -> None:
        calls.append(info.get("phase"))
        if step == 1:
            raise CancelledError("stop")

    reporter = Reporter(cancel_at_step_one, every=1)
    result = train_edit(G, clip, _config(batch=1, catalogue_dir=tmp_path), latents=ws,
                        reporter=reporter)
    assert result.partial and "held_first" not in result.edit.info["prior"]
    assert "training again, free" not in calls


def test_a_two_clause_prompt_keeps_both_clauses_when_one_is_trained_again(
        G, clip, tmp_path, monkeypatch, held_then_free) -> None:
    _short_on(monkeypatch, {1})
    ws = G.mapping_ws(G.z_from_seeds([3, 4]))
    edit = train_edit(G, clip, _config(prompt="a red circle on a blue background", batch=2,
                                       catalogue_dir=tmp_path), latents=ws).edit
    prompts = [link.prompt for link in edit.chain()]
    assert prompts == ["a red circle"] * 2 + ["a blue background"] * 2
    assert edit.summary()["clauses"] == ["a red circle", "a blue background"]
    res = apply_edits(G, ws, [Edit.load(edit.save(tmp_path / "two.safetensors"))])
    assert res.prompts == ["a red circle", "a blue background"]


def test_a_raised_bar_trains_again_the_image_that_got_only_part_of_the_way(
        G, clip, tmp_path, monkeypatch, held_then_free) -> None:
    """``free_below``: held, image 0 got 0.7 of the way (not short by the bar that leaves an
    image unchanged); with the bar at 0.9 it is trained again free, without it it keeps the
    held edit."""
    monkeypatch.setattr(fit, "MIN_REACH", 0.5)

    def reach(self: PromptFit, text: torch.Tensor, edited: torch.Tensor) -> list[float]:
        held = not self.covered and _training_held[0]
        return [0.7 if held else 1.0 for _ in range(edited.shape[0])]

    monkeypatch.setattr(PromptFit, "reach", reach)
    ws = G.mapping_ws(G.z_from_seeds([5]))
    raised = train_edit(G, clip, _config(batch=1, catalogue_dir=tmp_path, free_below=0.9,
                                         keep_held_when_better=False), latents=ws).edit
    assert raised.info["prior"]["held_first"]["short"] == [0]
    kept = train_edit(G, clip, _config(batch=1, catalogue_dir=tmp_path, free_below=None),
                      latents=ws).edit
    assert "held_first" not in kept.info["prior"] and kept.info["prompt_fit"]["reach"] == [0.7]
    res = apply_edits(G, ws, [kept])
    assert not torch.equal(res.edited, res.original)  # 0.7 of the way is an edit, not a miss


def test_the_reach_that_frees_an_image_is_read_on_the_picture_the_region_choice_gives(
        G, clip, tmp_path, monkeypatch) -> None:
    """Held, an edit can reach the prompt before the region choice and lose it with the
    choice (the change lay outside the piece that won). It is the chosen region's picture
    that is judged: such an image is freed at once, runs the steps the contest's winner was
    credited with (it trained held), and its reach as training went is in the record."""
    import coral_core.editing.trainer as trainer

    made_at, chosen_at = [0], [10 ** 9]  # the step whose picture is being judged; the choice
    choose, read_reach = trainer._choose_region, trainer._trace_reach

    def choose_and_note(run: Any, step: int, *args: Any) -> Any:
        chosen_at[0] = step
        return choose(run, step, *args)

    def trace_and_note(run: Any, loss: Any, step: int) -> None:
        made_at[0] = step  # every step's picture passes here as soon as it is made
        read_reach(run, loss, step)

    monkeypatch.setattr(trainer, "_choose_region", choose_and_note)
    monkeypatch.setattr(trainer, "_trace_reach", trace_and_note)
    monkeypatch.setattr(fit, "MIN_REACH", 0.5)
    monkeypatch.setattr(PromptFit, "reach", lambda self, text, edited:
                        [0.0 if made_at[0] >= chosen_at[0] else 1.0] * edited.shape[0])
    ws = G.mapping_ws(G.z_from_seeds([3]))
    steps = 2 * trainer.REACH_TRACE_EVERY
    edit = train_edit(G, clip, _config(steps=steps, batch=1, catalogue_dir=tmp_path,
                                       free_when_short=False), latents=ws).edit
    prior, pruning = edit.info["prior"], edit.info["region_pruning"]
    assert prior["freed_at_region_choice"] == [0]
    assert "steps_credited_to_the_contest" not in pruning and edit.info["steps"] == steps
    trace = prior["reach_trace"]
    assert sorted(trace, key=int) == [str(trainer.REACH_TRACE_EVERY), str(steps)]
    assert trace[str(steps)] == [0.0]

    chosen_at[0] = 10 ** 9  # reaching after the choice as well: held to the end, credit taken
    monkeypatch.setattr(PromptFit, "reach", lambda self, text, edited: [1.0] * edited.shape[0])
    edit = train_edit(G, clip, _config(steps=steps, batch=1, catalogue_dir=tmp_path,
                                       free_when_short=False), latents=ws).edit
    assert edit.info["prior"]["freed_at_region_choice"] == []
    assert edit.info["region_pruning"].get("steps_credited_to_the_contest", 0) > 0


def _logits_by_step(monkeypatch: pytest.MonkeyPatch, G, clip, tmp_path, recovers: bool = False,
                    **changes: Any) -> tuple[Edit, dict[int, torch.Tensor], int]:
    """A held run of two images (10 steps, the region chosen at step 5, freed images looked
    at one step later) in which image 0 loses the prompt with the region choice (image 1
    keeps it) and, if ``recovers``, gets there again on the next step: the edit, the
    selector's weights as each step began (at -1: as hardening left them at the choice),
    the choice's step."""
    import coral_core.editing.trainer as trainer

    made_at, chosen_at = [0], [10 ** 9]
    weights: dict[int, torch.Tensor] = {}
    choose, read_reach, free = trainer._choose_region, trainer._trace_reach, \
        trainer._free_short_rows

    def choose_and_note(run: Any, step: int, *args: Any) -> Any:
        chosen_at[0] = step
        return choose(run, step, *args)

    def trace_and_note(run: Any, loss: Any, step: int) -> None:
        made_at[0] = step
        weights[step] = run.selector.weights().detach().clone()
        read_reach(run, loss, step)

    def free_and_note(run: Any, loss: Any) -> bool:
        weights[-1] = run.selector.weights().detach().clone()  # as hardening left them
        return free(run, loss)

    def reach(self: PromptFit, text: torch.Tensor, edited: torch.Tensor) -> list[float]:
        lost = made_at[0] == chosen_at[0] or (made_at[0] > chosen_at[0] and not recovers)
        return [0.0 if i == 0 and lost else 1.0 for i in range(edited.shape[0])]

    monkeypatch.setattr(trainer, "_choose_region", choose_and_note)
    monkeypatch.setattr(trainer, "_trace_reach", trace_and_note)
    monkeypatch.setattr(trainer, "_free_short_rows", free_and_note)
    monkeypatch.setattr(trainer, "REOPEN_AFTER", 1)
    monkeypatch.setattr(fit, "MIN_REACH", 0.5)
    monkeypatch.setattr(PromptFit, "reach", reach)
    ws = G.mapping_ws(G.z_from_seeds([3, 4]))
    edit = train_edit(G, clip, _config(steps=10, batch=2, catalogue_dir=tmp_path,
                                       free_when_short=False, **changes), latents=ws).edit
    return edit, weights, chosen_at[0]


def test_a_freed_image_still_short_gets_its_pieces_back_soft_and_hardened_again(
        G, clip, tmp_path, monkeypatch) -> None:
    """Freed at the choice and still nowhere a step later, image 0 gets back the layers
    hardening turned off in the pieces its region kept (the masks' start value; the layers
    it kept stay on), trained for it alone; image 1, still held, keeps exactly the region
    hardening gave it. Half way to the end both are exact (0 or 1) again, as apply uses
    them, and the record names the reopened pieces."""
    edit, weights, chosen = _logits_by_step(monkeypatch, G, clip, tmp_path)
    assert chosen == 5 and edit.info["prior"]["freed_at_region_choice"] == [0]
    reopened = edit.info["prior"]["reopened"]
    assert list(reopened) == ["0"] and reopened["0"]
    pieces = reopened["0"]
    hard = weights[-1]
    assert torch.equal(weights[chosen + 1], hard)  # one step in the region chosen, as it was
    soft = weights[chosen + 2]
    kept = hard[0][:, pieces] == 1
    assert bool(kept.any()) and not bool(kept.all())
    assert torch.equal(soft[0][:, pieces][kept], torch.ones(int(kept.sum())))
    assert torch.allclose(soft[0][:, pieces][~kept], torch.full((int((~kept).sum()),), 0.5))
    assert not torch.equal(weights[chosen + 3][0][:, pieces], soft[0][:, pieces])  # they train
    last = weights[max(weights)]  # the last step's (image 0 is then left unchanged: short)
    for held in (soft[1], weights[chosen + 3][1], last[1], edit.selector.weights()[1]):
        assert torch.equal(held, hard[1])  # image 1: as hardening left it, throughout
    assert bool(((last[0][:, pieces] == 0) | (last[0][:, pieces] == 1)).all())
    assert bool(last[0][:, pieces].amax() == 1) and not edit.selector.logits.requires_grad


@pytest.mark.parametrize("changes", [dict(recovers=True), dict(reopen_freed=False)],
                         ids=["got there after the choice", "reopening off"])
def test_a_freed_image_keeps_its_hardened_region_when_it_gets_there_or_reopening_is_off(
        G, clip, tmp_path, monkeypatch, changes: dict[str, Any]) -> None:
    edit, weights, chosen = _logits_by_step(monkeypatch, G, clip, tmp_path, **changes)
    assert edit.info["prior"]["freed_at_region_choice"] == [0]
    assert "reopened" not in edit.info["prior"]
    for step in range(chosen + 1, 11):
        assert torch.equal(weights[step], weights[-1])


def test_one_image_of_an_edit_trained_again_applies_alone_as_in_the_batch(
        G, clip, tmp_path, monkeypatch, held_then_free) -> None:
    """Image 1 was trained again free, image 0 kept the held edit: taking either image's row
    (as a batch of other latents does) gives that image's own change, not an error."""
    _short_on(monkeypatch, {1})
    ws = G.mapping_ws(G.z_from_seeds([3, 4]))
    edit = train_edit(G, clip, _config(batch=2, catalogue_dir=tmp_path), latents=ws).edit
    assert edit.then is not None
    both = apply_edits(G, ws, [edit]).edited
    for i in (0, 1):
        alone = edit.row(i)
        assert alone.rows() == 1 and all(link.rows() == 1 for link in alone.chain())
        got = apply_edits(G, ws[i:i + 1], [alone]).edited
        assert torch.allclose(got[0], both[i], atol=1e-4)


def _held_reach(monkeypatch: pytest.MonkeyPatch, held_reach: dict[int, float]) -> None:
    """The CLIP's verdict, fixed: held, image i gets ``held_reach[i]`` of the way (1.0 when
    not given); free, every image gets all the way."""
    monkeypatch.setattr(fit, "MIN_REACH", 0.5)

    def reach(self: PromptFit, text: torch.Tensor, edited: torch.Tensor) -> list[float]:
        held = not self.covered and _training_held[0]
        return [held_reach.get(i, 1.0) if held else 1.0 for i in range(edited.shape[0])]

    monkeypatch.setattr(PromptFit, "reach", reach)


def _reading(monkeypatch: pytest.MonkeyPatch, free_repaints: set[int]) -> None:
    """The CLIP's reading of what else changed, fixed: held, every image gains 0.2 of the
    prompt and keeps 0.95 of the rest; free, it gains 0.25, and keeps 0.6 of the rest on
    ``free_repaints`` (it repainted what the prompt does not name), 0.95 elsewhere."""
    import coral_core.editing.trainer as trainer

    def reading(text: torch.Tensor, original: torch.Tensor, edited: torch.Tensor
                ) -> tuple[list[float], list[float]]:
        n = edited.shape[0]
        if _training_held[0]:
            return [0.2] * n, [0.95] * n
        return [0.25] * n, [0.6 if i in free_repaints else 0.95 for i in range(n)]

    monkeypatch.setattr(trainer, "prompt_and_rest", reading)


def test_an_image_whose_free_edit_repaints_the_rest_keeps_its_held_edit(
        G, clip, tmp_path, monkeypatch, held_then_free) -> None:
    """Held, the image got 0.7 of the way (short of the 0.9 bar, past MIN_REACH); trained
    again free it gets all the way but repaints what the prompt does not name (the rest falls
    0.35, the prompt rises 0.05): the user gets the held edit, and the record says the free
    one was tried (``keep_held_when_better``, off by default). Switched off, the free edit
    is the edit."""
    _held_reach(monkeypatch, {0: 0.7})
    _reading(monkeypatch, {0})
    ws = G.mapping_ws(G.z_from_seeds([5]))
    edit = train_edit(G, clip, _config(batch=1, catalogue_dir=tmp_path, free_below=0.9,
                                       keep_held_when_better=True), latents=ws).edit
    assert edit.then is None and edit.info["prior"]["held_kept"] == [0]
    assert edit.info["prior"]["free_tried"]["reach"] == [1.0]
    assert edit.info["prompt_fit"]["reach"] == [0.7] and edit.info["prompt_fit"]["unchanged"] == []
    assert edit.info["wall_seconds"] > edit.info["prior"]["free_tried"]["wall_seconds"] > 0
    kept = apply_edits(G, ws, [edit])
    assert not torch.equal(kept.edited, kept.original)  # the held change, not nothing
    again = apply_edits(G, ws, [Edit.load(edit.save(tmp_path / "kept.safetensors"))])
    assert torch.equal(again.edited, kept.edited)
    free = train_edit(G, clip, _config(batch=1, catalogue_dir=tmp_path, free_below=0.9,
                                       keep_held_when_better=False), latents=ws).edit
    assert "held_first" in free.info["prior"] and "held_kept" not in free.info["prior"]
    assert not torch.allclose(apply_edits(G, ws, [free]).edited, kept.edited, atol=1e-3)


def test_the_free_edit_stands_where_it_keeps_the_rest_or_the_held_one_got_nowhere(
        G, clip, tmp_path, monkeypatch, held_then_free) -> None:
    """Three images: 0 held at 0.7 whose free edit repaints the rest (keeps the held edit), 1
    held at 0.7 whose free edit keeps the rest (takes the free edit), 2 held at 0.1 (under
    MIN_REACH: nothing to keep, the free edit whatever it does). Each image applied alone
    gives what the batch gives."""
    _held_reach(monkeypatch, {0: 0.7, 1: 0.7, 2: 0.1})
    _reading(monkeypatch, {0, 2})
    ws = G.mapping_ws(G.z_from_seeds([3, 4, 5]))
    edit = train_edit(G, clip, _config(batch=3, catalogue_dir=tmp_path, free_below=0.9,
                                       keep_held_when_better=True), latents=ws).edit
    assert edit.info["prior"]["held_kept"] == [0]
    assert edit.info["prior"]["trained_again_free"] == [1, 2]
    assert edit.then is not None and edit.info["prompt_fit"]["reach"] == [0.7, 1.0, 1.0]
    res = apply_edits(G, ws, [edit])
    assert not torch.equal(res.edited[0], res.original[0])
    for i in range(3):
        alone = apply_edits(G, ws[i:i + 1], [edit.row(i)])
        assert torch.allclose(alone.edited[0], res.edited[i], atol=1e-4)


def test_which_images_keep_their_held_edit() -> None:
    from coral_core.editing.trainer import _rows_better_held

    held = {"reach": [0.7, 0.7, 0.3, 0.7, 0.95], "gain": [0.2] * 5, "rest": [0.9] * 5}
    free = {"reach": [1.0] * 5, "gain": [0.3, 0.3, 0.3, 0.2, 0.3],
            "rest": [0.7, 0.85, 0.5, 0.9, 0.5], "unchanged": [3]}
    # 0: the rest falls 0.2 for 0.1 of the prompt: held. 1: 0.05 for 0.1: free. 2: held
    # under MIN_REACH: free. 3: the free edit is left unchanged: held. 4: not short.
    assert _rows_better_held(held, free, [0, 1, 2, 3]) == [0, 3]
    assert _rows_better_held(held, {**free, "rest": [0.8] * 5}, [0]) == []  # 0.1 for 0.1
    assert _rows_better_held({"reach": [0.7]}, free, [0]) == []  # no reading: as before


def test_the_prompt_and_the_rest_as_the_clip_reads_them() -> None:
    from coral_core.editing.fit import prompt_and_rest

    text = torch.tensor([1.0, 0.0, 0.0])
    original = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    along = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # 0: towards the text only
    gain, rest = prompt_and_rest(text, original, along)
    assert gain[0] == pytest.approx(2 ** -0.5, abs=1e-4) and rest[0] == pytest.approx(1.0)
    assert gain[1] == pytest.approx(0.0) and rest[1] == pytest.approx(2 ** -0.5, abs=1e-4)
    assert prompt_and_rest(text, original, original * 3) == ([0.0, 0.0], [1.0, 1.0])
