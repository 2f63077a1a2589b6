"""Clean edits on the user's path: the final composite confines every change to the selected
segments, and a prompt that does not fit leaves the image exactly as it was, with a warning
that survives the edit file."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coral_core.cache import get_clip, get_generator
from coral_core.editing.apply import apply_edits
from coral_core.editing.edit import Edit
from coral_core.editing.selectors import composite
from coral_core.editing.trainer import TrainConfig, train_edit
from coral_core.world import assets


def _models():
    return get_generator(assets.DEMO_GENERATOR).generator, get_clip(assets.DEMO_CLIP)


def test_composite_keeps_every_pixel_outside_the_selected_segments(tmp_path: Path) -> None:
    G, clip = _models()
    ws = G.mapping_ws(G.z_from_seeds([3]))
    edit = train_edit(G, clip, TrainConfig(prompt="a yellow background", steps=8, batch=1,
                                           seed=3), latents=ws).edit
    assert edit.composite
    path = edit.save(tmp_path / "e.safetensors")
    loaded = Edit.load(path)
    assert loaded.composite
    res = apply_edits(G, ws, [loaded])
    assert res.original is not None
    feats = G.synthesize_with_features(ws, noise=G.make_noise(1, "const"))[1]
    region = loaded.region(G, feats, res.original)
    assert region is not None and region.shape[-1] == G.img_resolution
    outside = (region == 0).expand_as(res.edited)
    assert bool(outside.any())
    assert torch.equal(res.edited[outside], res.original[outside])


def test_composite_holds_both_invariants() -> None:
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert torch.equal(composite(a, b, torch.zeros(2, 1, 8, 8)), b)
    assert torch.equal(composite(a, b, torch.ones(2, 1, 8, 8)), a)


def test_prompts_that_do_not_fit_leave_images_unchanged_and_say_why(tmp_path: Path) -> None:
    from coral_core.world.scene import BG_NAMES, scenes_from_z

    G, clip = _models()
    z = G.z_from_seeds([72, 73])
    ws = G.mapping_ws(z)
    bg = BG_NAMES[int(scenes_from_z(z).background[0])]
    for prompt, unchanged in (("a dog", [0, 1]), ("qwzx blorp", [0, 1]),
                              (("an " if bg[0] in "aeiou" else "a ") + f"{bg} background",
                               [0])):
        edit = train_edit(G, clip, TrainConfig(prompt=prompt, steps=6, batch=2),
                          latents=ws).edit
        loaded = Edit.load(edit.save(tmp_path / "fit.safetensors"))
        assert loaded.info["warnings"] and prompt in loaded.info["warnings"][0]
        res = apply_edits(G, ws, [loaded])
        assert res.original is not None
        for i in unchanged:
            assert torch.equal(res.edited[i], res.original[i]), prompt
        if prompt == "qwzx blorp":  # read as a colour by this CLIP: refused by its words
            assert "never trained on 'qwzx', 'blorp'" in loaded.info["warnings"][0]
        if prompt not in ("a dog", "qwzx blorp"):
            assert not torch.equal(res.edited[1], res.original[1])


def test_fit_check_is_switchable() -> None:
    G, clip = _models()
    ws = G.mapping_ws(G.z_from_seeds([72]))
    edit = train_edit(G, clip, TrainConfig(prompt="a dog", steps=4, batch=1, check_fit=False),
                      latents=ws).edit
    assert "prompt_fit" not in edit.info
    res = apply_edits(G, ws, [edit])
    assert res.original is not None and not torch.equal(res.edited, res.original)


def test_long_phases_between_steps_report_progress(tmp_path: Path) -> None:
    """The sample bank and the region contest/pruning send progress naming their phase, so a
    host's progress bar never sits silent between two steps."""
    from coral_core.progress import Reporter

    G, clip = _models()
    seen: list[tuple[int, str]] = []
    reporter = Reporter(lambda step, total, info: seen.append((step, info.get("phase", ""))),
                        every=1000)
    ws = G.mapping_ws(G.z_from_seeds([5]))
    train_edit(G, clip, TrainConfig(prompt="a yellow background", steps=10, batch=1,
                                    catalogue_dir=tmp_path), latents=ws, reporter=reporter)
    phases = {p for _, p in seen}
    assert any(p.startswith("sample bank ") for p in phases)  # with its count
    assert "region contest and pruning" in phases
    contest_steps = [s for s, p in seen if p.startswith("region")]
    assert len(contest_steps) >= 5 and len(set(contest_steps)) == 1


def test_a_region_edge_spoilt_by_its_neighbour_takes_the_interior_change() -> None:
    """Coarse layers straddle a region's edge, so the blend leaves a ring of the old colour
    there; the composite carries the interior's change out to the edge instead."""
    res = 64
    original = torch.zeros(1, 3, res, res)
    region = torch.zeros(1, 1, res, res)
    region[..., :, :40] = 1.0  # a background left of an object
    edited = original.clone()
    edited[:, 1, :, :37] = 0.8   # the new colour inside ...
    edited[:, 1, :, 37:40] = 0.1  # ... and a 3-px ring where the old colour stayed
    out = composite(edited, original, region)
    assert torch.allclose(out[:, 1, :, :40], torch.full_like(out[:, 1, :, :40], 0.8))
    assert torch.equal(out[..., 40:], original[..., 40:])  # outside: untouched


def test_an_anti_aliased_edge_pixel_is_shared_by_its_mix_of_colours() -> None:
    from coral_core.editing.selectors import snap_segments

    res = 16
    seg = torch.zeros(1, 2, res, res)
    seg[:, 0, :, :8] = 1
    seg[:, 1, :, 8:] = 1
    img = torch.full((1, 3, res, res), -1.0)
    img[:, 0, :, 8:] = 1.0           # red object right of a black background
    img[:, 0, :, 8] = 0.0            # its edge column: half red, half black
    snapped = snap_segments(seg, img)
    assert torch.allclose(snapped.sum(1), torch.ones(1, res, res))
    edge = snapped[0, :, 4, 8]
    assert abs(float(edge[0]) - 0.5) < 0.15 and abs(float(edge[1]) - 0.5) < 0.15
    assert float(snapped[0, 0, 4, 2]) == 1.0 and float(snapped[0, 1, 4, 13]) == 1.0


def test_the_chosen_region_is_edited_at_full_strength_unless_switched_off() -> None:
    import dataclasses

    G, clip = _models()
    ws = G.mapping_ws(G.z_from_seeds([5]))
    # (the fit check off: ten steps are too few to reach the prompt, and this is about the
    # selection's strength, not the verdict)
    cfg = TrainConfig(prompt="a green background", steps=10, batch=1, seed=5, check_fit=False)
    hard = train_edit(G, clip, cfg, latents=ws).edit
    weights = torch.sigmoid(hard.selector.logits)
    shown = weights[..., :int(hard.info["selection"]["segments"][-1]) + 1]
    assert bool((weights == 1).any()) and bool(((shown == 0) | (shown == 1)).all())
    soft = train_edit(G, clip, dataclasses.replace(cfg, harden_selection=False),
                      latents=ws).edit
    weights = torch.sigmoid(soft.selector.logits)
    assert bool(((weights > 0.01) & (weights < 0.99)).any())


def test_an_edit_that_falls_short_or_overshoots_leaves_its_image_unchanged_and_says_why():
    from coral_core.editing.fit import PromptFit

    # scores before 0.1 (images 0-2, 4) and 0.6 (image 3, already there; image 5 starts at
    # 0.48, close to the best); the bank's best samples score 0.5, its mean 0.3 (range 0.2)
    fit = PromptFit(1.0, [False, False, False, True, False, False], [],
                    [0.1, 0.1, 0.1, 0.6, 0.1, 0.48], 0.5, 0.2)
    text = torch.tensor([1.0, 0.0])
    edited = torch.tensor([[0.12, 1.0], [0.5, 0.9], [0.9, 0.4], [0.6, 0.8], [0.55, 0.8],
                           [0.52, 0.8]])
    fit.judge_outcome("a red circle", text, edited)
    assert fit.reached[:3] == [0.05, 1.0, 2.0] and fit.reached[5] == 2.0
    assert fit.overshoot[:3] == [-1.9, 0.0, 2.0] and fit.overshoot[4:] == [0.25, 0.1]
    # short; far (twice its way and two ranges past the best); already there. Image 4 went a
    # quarter range past the best but only 1.1x its way; image 5 twice its (short) way but
    # only a tenth of the range past: both correct edits, kept
    assert fit.unchanged_rows() == [0, 2, 3]
    assert len(fit.warnings) == 2
    assert "image(s) 0 got only 5%" in fit.warnings[0]
    assert "image(s) 2 moved the CLIP 2.0 of the prompt's range past" in fit.warnings[1]


def test_prompt_parts_leave_out_one_content_word_each() -> None:
    from coral_core.editing.fit import prompt_parts

    assert prompt_parts("a cyan triangle") == [(0, "a triangle"), (0, "a cyan")]
    # two things named at once: each is checked on its own (no one word left out of the
    # whole prompt leaves what a scene with both changes already shows)
    # (every picture has a background: that clause is never checked)
    assert prompt_parts("a red square on a blue background") == [(0, "a square"), (0, "a red")]
    assert prompt_parts("a red circle, a green square") == [
        (0, "a circle"), (0, "a red"), (1, "a square"), (1, "a green")]
    # one thing and a detail the edit gives it: only the thing must be there
    assert prompt_parts("a face with a beard") == []
    assert prompt_parts("a dog") == [] and prompt_parts("the") == []
    # what is left reads as a phrase: the article suits the word now after it
    assert prompt_parts("an orange circle") == [(0, "a circle"), (0, "an orange")]
    assert prompt_parts("A red apple on an old table") == [
        (0, "An apple"), (0, "A red"), (1, "a table"), (1, "an old")]


def test_an_object_the_scene_lacks_is_told_from_one_it_has() -> None:
    """On the demo models: for a scene, "a <colour> <shape it lacks>" is flagged as naming
    nothing there, "a <colour> <shape it has>" and a background recolour are not (seed 151's
    "a blue background" falls short on "a background" by 0.26 of the prompt's range: the
    first bound tried, 0.25, left it unchanged). No training needed: the check reads the
    image, the prompt's parts and the sample bank."""
    from coral_core.editing.fit import check_prompt_fit, prompt_parts
    from coral_core.editing.prior import sample_bank_for
    from coral_core.world.evaluate import build_cases

    G, clip = _models()
    cases, ws, _ = build_cases(G, [149, 151], ("background", "object colour", "absent",
                                               "two attributes"))
    assert "two attributes" in [c.kind for c in cases]
    assert "a blue background" in [c.prompt for c in cases]
    bank = sample_bank_for(G, clip, 1024)
    with torch.no_grad():
        images = clip.encode_image(G.synthesize(ws, noise_mode="const"))
    for case in cases:
        parts = prompt_parts(case.prompt)
        fit = check_prompt_fit(bank, clip.encode_text([case.prompt]),
                               images[case.index:case.index + 1], case.prompt, 64,
                               clip.encode_text([p for _, p in parts]) if parts else None,
                               [c for c, _ in parts])
        assert fit.absent == [case.kind == "absent"], case.prompt
        assert (fit.unchanged_rows() == [0]) == (case.kind == "absent")
        assert any("seem to lack" in w for w in fit.warnings) == (case.kind == "absent")
        unchecked = check_prompt_fit(bank, clip.encode_text([case.prompt]),  # check_absent off
                                     images[case.index:case.index + 1], case.prompt, 64, None)
        assert unchecked.absent == [False]


def test_a_per_prompt_edit_leaves_alone_the_scenes_that_lack_what_it_names(tmp_path) -> None:
    """A per-prompt edit meets its scenes only when applied (a ComfyUI batch): with the CLIP
    it was trained with, the scene that lacks the named shape comes back exactly as it was and
    the warning names its row; the check survives the edit file; without a CLIP, or with
    another one, every scene is edited (and the second says it was not checked)."""
    from coral_core.world.evaluate import build_cases

    G, clip = _models()
    cases, ws, _ = build_cases(G, [149, 151], ("absent",))
    case = cases[0]
    cfg = TrainConfig(prompt=case.prompt, variant="can", mode="per_prompt", steps=4, batch=2,
                      seed=0, truncation=1.0)
    edit = Edit.load(train_edit(G, clip, cfg).edit.save(tmp_path / "can.safetensors"))
    assert edit.scene_check is not None and edit.scene_check.parts.shape[0] == 2
    others = G.mapping_ws(G.z_from_seeds([5, 6, 7]), 1.0)
    batch = torch.cat([others[:1], ws[case.index:case.index + 1], others[1:]])
    checked = apply_edits(G, batch, [edit], clip=clip)
    verdict = checked.scenes[0]
    assert verdict is not None and 1 in verdict.absent
    assert checked.original is not None
    assert torch.equal(checked.edited[1], checked.original[1])
    left = set(verdict.left())
    for row in set(range(4)) - left:
        assert not torch.equal(checked.edited[row], checked.original[row]), row
    [warning] = [w for w in checked.warnings() if "lack" in w]
    assert f"image(s) {', '.join(map(str, verdict.absent))} seem to lack" in warning
    unchecked = apply_edits(G, batch, [edit])
    assert unchecked.scenes[0] is not None and unchecked.scenes[0].absent == []
    assert not [w for w in unchecked.warnings() if "lack" in w]
    assert not torch.equal(unchecked.edited[1], checked.original[1])
    edit.scene_check_clip = "0" * 16  # as if trained with another CLIP
    other = apply_edits(G, batch, [edit], clip=clip)
    assert other.warnings() and "not checked" in other.warnings()[0]
    assert torch.equal(other.edited, unchecked.edited)


def test_a_per_prompt_edit_that_overshoots_or_falls_short_on_a_scene_leaves_it_alone(
        tmp_path) -> None:
    """At apply a per-prompt edit meets the rule a per-image edit meets after training: a
    scene whose CLIP score went far past the generator's best pictures of the prompt, or
    under half way to them, comes back exactly as it was, with a warning naming its row;
    one whose score landed near the best samples' is edited. A reversed edit (negative
    strength) is not judged."""
    from dataclasses import replace

    G, clip = _models()
    cfg = TrainConfig(prompt="a red background", variant="can", mode="per_prompt", steps=4,
                      batch=2, seed=0, truncation=1.0)
    edit = train_edit(G, clip, cfg).edit
    assert edit.scene_check is not None
    ws = G.mapping_ws(G.z_from_seeds([11, 12, 13]), 1.0)
    plain = apply_edits(G, ws, [edit])  # no CLIP: no check, every scene edited
    assert plain.original is not None
    with torch.no_grad():
        start = edit.scene_check.scores(clip.encode_image(plain.original))
        after = edit.scene_check.scores(clip.encode_image(plain.edited))
    moved = (after - start).tolist()
    assert all(abs(m) > 0 for m in moved)
    # the best samples' score put exactly where row 0 landed: row 0 went all the way
    # (reach 1), the rows that moved less or more fall short or overshoot
    target = float(after[0])
    edit.scene_check = replace(edit.scene_check, best_score=target,
                               prompt_range=max(abs(m) for m in moved) / 50)
    edit.scene_check.already = lambda e: [False] * e.shape[0]  # type: ignore[method-assign]
    edit.scene_check.absent = lambda e: [False] * e.shape[0]  # type: ignore[method-assign]
    checked = apply_edits(G, ws, [edit], clip=clip)
    verdict = checked.scenes[0]
    assert verdict is not None and checked.original is not None
    assert 0 not in verdict.far + verdict.short and verdict.far + verdict.short
    assert not torch.equal(checked.edited[0], checked.original[0])
    for row in (1, 2):
        reach = (float(after[row]) - float(start[row])) / (target - float(start[row]))
        over = (float(after[row]) - target) / edit.scene_check.prompt_range
        expect_far = reach > 1.5 and over > 0.2
        assert (row in verdict.far) == expect_far, (row, reach, over)
        assert (row in verdict.short) == (reach < 0.5), (row, reach)
        if row in verdict.left():
            assert torch.equal(checked.edited[row], checked.original[row])
    for kind, words in (("far", "far past"), ("short", "under half way")):
        rows = getattr(verdict, kind)
        named = [w for w in checked.warnings() if words in w]
        assert bool(named) == bool(rows)
        if rows:
            assert f"image(s) {', '.join(map(str, rows))}" in named[0]
    reversed_ = apply_edits(G, ws, [edit], -1.0, clip=clip)
    assert reversed_.scenes[0] is not None
    assert reversed_.scenes[0].far == reversed_.scenes[0].short == []
    with torch.no_grad():  # an edit that changes nothing (a prompt it found no aim for)
        edit.direction.delta.zero_()
    idle = apply_edits(G, ws, [edit], clip=clip)
    assert idle.scenes[0] is not None and idle.scenes[0].short == [] and not idle.warnings()


def test_a_scene_check_that_does_not_fit_together_is_refused(tmp_path) -> None:
    """The scene check's tensors come from a file: shapes that disagree, a missing part or a
    CLIP fingerprint that is not one are a named error, not a crash at apply time."""
    import pytest
    from safetensors.torch import load_file

    from coral_core.errors import ModelFormatError
    from coral_core.formats.integrity import HASH_KEY, read_safetensors, write_safetensors

    G, clip = _models()
    cfg = TrainConfig(prompt="a red circle", variant="can", mode="per_prompt", steps=2,
                      batch=2, seed=0, truncation=1.0)
    good = train_edit(G, clip, cfg).edit.save(tmp_path / "good.safetensors")
    meta, tensors = read_safetensors(good, "edit", require_hash=True)
    assert set(load_file(str(good))) >= {"scene_check.text", "scene_check.parts"}
    d = tensors["scene_check.text"].numel()
    for name, change in (
            ("parts of another width", {"scene_check.parts": torch.zeros(2, d + 1)}),
            ("stats of the wrong length", {"scene_check.stats": torch.zeros(3)}),
            ("a part without its stats", {"scene_check.parts": torch.zeros(3, d)}),
            ("no text", {"scene_check.text": None}),
            ("coefficients of another size", {"scene_check.part_coefs": torch.zeros(3, 3)}),
            ("an unknown piece", {"scene_check.extra": torch.zeros(1)}),
            ("bad fingerprint", {"meta:scene_check_clip": "../x"})):
        t, m = dict(tensors), dict(meta)
        for k, v in change.items():
            if k.startswith("meta:"):
                m[k[5:]] = v
            elif v is None:
                del t[k]
            else:
                t[k] = v
        m.pop(HASH_KEY, None)
        path = write_safetensors(tmp_path / f"{name}.safetensors", t, m)
        with pytest.raises(ModelFormatError, match="scene check"):
            Edit.load(path)
    # an edit saved before the coefficients existed still loads and reads raw part scores
    loaded = Edit.load(good)
    assert loaded.scene_check is not None and loaded.scene_check.part_coefs is not None
    old = {k: v for k, v in tensors.items() if k != "scene_check.part_coefs"}
    m = {k: v for k, v in meta.items() if k != HASH_KEY}
    before = Edit.load(write_safetensors(tmp_path / "before.safetensors", old, m))
    assert before.scene_check is not None and before.scene_check.part_coefs is None


def test_a_per_prompt_edit_of_words_the_generator_draws_nothing_of_changes_nothing() -> None:
    """"a dog" on the shapes world: the per-prompt edit is trained for no step, applies as
    the identity to any scene and says why."""
    G, clip = _models()
    cfg = TrainConfig(prompt="a dog", variant="can", mode="per_prompt", steps=4, batch=2,
                      seed=0, truncation=1.0)
    result = train_edit(G, clip, cfg)
    assert result.history == []
    [warning] = result.edit.info["warnings"]  # the demo CLIP never read "dog"
    assert "never trained on 'dog'" in warning and "changes nothing" in warning
    ws = G.mapping_ws(G.z_from_seeds([1, 2]), 1.0)
    res = apply_edits(G, ws, [result.edit])
    assert res.original is not None
    assert (res.edited - res.original).abs().max() < 1e-5


@pytest.mark.parametrize("world", assets.WORLDS)
def test_each_shipped_per_prompt_edit_says_which_scenes_it_leaves_alone(world: str) -> None:
    """A world's shipped edit, applied as the apply template does (seeds 0-7, with its
    CLIP): it changes some pictures, and every picture it leaves the same is named in a
    warning with the reason (no region selected, or already showing the prompt)."""
    import re

    where = assets.world_assets(world)
    G, clip = get_generator(where.generator).generator, get_clip(where.clip)
    edit = Edit.load(assets.DEMO_EDITS / assets.SHIPPED_EDITS[world])
    assert edit.prompt == assets.DEMO_PROMPTS[world] and edit.mode == "per_prompt"
    res = apply_edits(G, G.mapping_ws(G.z_from_seeds(range(8)), 1.0), [edit], clip=clip)
    assert res.original is not None
    same = {i for i in range(8) if torch.equal(res.edited[i], res.original[i])}
    assert len(same) < 8
    named = {int(n) for w in res.warnings()
             for rows in re.findall(r"image\(s\) ((?:\d+, )*\d+)", w) for n in rows.split(", ")}
    assert same <= named, (same, res.warnings())


def test_a_prompt_naming_two_things_is_learned_and_applied_as_two_edits(tmp_path) -> None:
    """"a blue square on a green background": one edit per thing, kept in one file and laid
    one over the other at apply; the paper's preset keeps the prompt whole. A file whose
    clauses do not add up is a named error."""
    import pytest
    from coral_core.editing.presets import preset_config
    from coral_core.errors import ModelFormatError
    from coral_core.formats.integrity import HASH_KEY, read_safetensors, write_safetensors

    G, clip = _models()
    ws = G.mapping_ws(G.z_from_seeds([148]))
    prompt = "a blue square on a green background"
    result = train_edit(G, clip, TrainConfig(prompt=prompt, steps=4, batch=1, seed=148),
                        latents=ws)
    path = result.edit.save(tmp_path / "two.safetensors")
    edit = Edit.load(path)
    assert [e.prompt for e in edit.chain()] == ["a blue square", "a green background"]
    assert edit.summary()["clauses"] == ["a blue square", "a green background"]
    res = apply_edits(G, ws, [edit])
    assert res.prompts == ["a blue square", "a green background"] and len(res.masks) == 2
    first = Edit.load(path)
    first.then = None
    alone = apply_edits(G, ws, [first])
    assert not torch.equal(res.edited, alone.edited)  # the second clause is laid over
    whole = train_edit(G, clip, preset_config("paper", prompt=prompt, steps=2, batch=1,
                                              seed=148), latents=ws).edit
    assert whole.then is None and whole.prompt == prompt

    meta, tensors = read_safetensors(path, "edit", require_hash=True)
    meta.pop(HASH_KEY)
    for name, m, t in (
            ("no clause metadata", {k: v for k, v in meta.items() if k != "clauses"}, tensors),
            ("clauses not a list", {**meta, "clauses": '{"a": "b"}'}, tensors),
            ("a clause missing its fields", {**meta, "clauses": '[{"prompt": "x"}]'}, tensors)):
        bad = write_safetensors(tmp_path / f"{name}.safetensors", t, m)
        with pytest.raises(ModelFormatError):
            Edit.load(bad)


def test_a_part_the_clip_reads_with_a_colour_bias_does_not_make_a_scene_absent() -> None:
    """A CLIP whose "a background" leans towards blue (in a toy embedding space: axis 0 is
    a background, 1 blue, 2 a circle, 3 red): a green-background scene has its background
    for "a blue background" (only the colour is missing), while a scene with no circle lacks
    what "a red circle" names. Raw part scores called the green background missing."""
    from coral_core.editing.fit import SceneCheck
    from coral_core.editing.prior import SampleBank

    gen = torch.Generator().manual_seed(0)
    n = 512
    blue = (torch.rand(n, generator=gen) < 0.3).float()
    red = (torch.rand(n, generator=gen) < 0.3).float()
    circle = (torch.rand(n, generator=gen) < 0.5).float()
    bank_emb = torch.stack([torch.ones(n), blue, circle, red * circle], 1)
    bank_emb = bank_emb + 0.05 * torch.randn(n, 4, generator=gen)
    bank = SampleBank(torch.zeros(n, 2), bank_emb, "g", "c")
    text = {"a blue background": [1.0, 1.0, 0, 0], "a background": [1.0, 0.8, 0, 0],
            "a blue": [0, 1.0, 0, 0], "a red circle": [0, 0, 1.0, 1.0],
            "a circle": [0, 0, 1.0, 0.2], "a red": [0, 0, 0, 1.0]}
    t = {k: torch.tensor(v) for k, v in text.items()}
    background = SceneCheck.from_bank(bank, t["a blue background"], 64,
                                      torch.stack([t["a background"], t["a blue"]]), [0, 0])
    green_scene = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # a background (green), a circle
    assert background.absent(green_scene) == [False]
    # what the check read before: each part's raw score against the best samples' raw score
    from dataclasses import replace

    from coral_core.editing.fit import _range

    on_bank = bank_emb @ background.parts.T
    best = (bank_emb @ background.text).topk(64).indices
    raw = replace(background, part_coefs=None, part_targets=on_bank[best].mean(0),
                  part_ranges=torch.tensor([_range(on_bank[:, j], 64)[0] for j in range(2)]))
    assert raw.absent(green_scene) == [True]
    circle_check = SceneCheck.from_bank(bank, t["a red circle"], 64,
                                        torch.stack([t["a circle"], t["a red"]]), [0, 0])
    no_circle = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert circle_check.absent(no_circle) == [True]
    assert circle_check.absent(torch.tensor([[1.0, 0.0, 1.0, 0.0]])) == [False]  # blue circle
