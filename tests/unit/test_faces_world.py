"""The face world's truth is true: renders are deterministic, masks partition the picture,
every attribute changes pixels only inside the parts the evaluation says it changes, captions
are true exactly where the truth matrix says, and hair never vanishes into its background."""
from __future__ import annotations

import random

import torch

from coral_core.world.faces.captions import caption, caption_for, facts_of, truth_matrix
from coral_core.world.faces.clip_data import twins
from coral_core.world.faces.evaluate import KINDS, change_region
from coral_core.world.faces.render import render
from coral_core.world.faces.scene import (BACKGROUNDS, HAIR_COLOURS, PARTS, faces_from_z,
                                          random_faces)


def test_renders_are_deterministic_and_masks_partition_the_picture() -> None:
    faces = random_faces(12, 4)
    a, ma = render(faces)
    b, mb = render(faces.clone())
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert torch.allclose(ma.sum(1), torch.ones_like(ma[:, 0]), atol=1e-5)
    assert a.shape == (12, 3, 64, 64) and a.min() >= -1 and a.max() <= 1
    for i in range(12):
        f = faces.describe(i)
        for part, absent in (("beard", f["beard"] == "none"),
                             ("glasses", f["glasses"] == "none"),
                             ("hair", f["hair_style"] == "bald")):
            assert (float(ma[i, PARTS.index(part)].sum()) == 0) == absent, (i, part)
        assert float(ma[i, PARTS.index("eyes")].sum()) >= 20  # two irises: readable


def test_each_edit_changes_pixels_only_inside_its_parts() -> None:
    """The evaluation's cases (its own choice of new values) change nothing outside the
    region it scores preservation against."""
    import numpy as np

    from coral_core.world.faces.evaluate import _new_value

    faces = random_faces(40, 9)
    asked = 0
    for i in range(40):
        one = faces.select(slice(i, i + 1))
        img, masks = render(one)
        for n, (kind, (attr, parts)) in enumerate(KINDS.items()):
            new = _new_value(kind, one, np.random.RandomState(i * 7 + n))
            if new is None:
                continue
            asked += 1
            img2, masks2 = render(one.replace(**{attr: new}))
            region = change_region(masks[0], masks2[0], parts) > 0
            changed = (img2[0] - img[0]).abs().amax(0) > 1e-4
            assert bool(changed.any()), (i, kind)
            assert not bool((changed & ~region).any()), (i, kind)
    assert asked > 150


def test_captions_are_true_where_the_truth_matrix_says() -> None:
    faces = random_faces(40, 2)
    rng = random.Random(0)
    specs = [caption_for(faces, i, rng) for i in range(40)]
    truth = truth_matrix(specs, faces)
    for i in range(40):
        facts = facts_of(faces, i)
        assert truth[i, i] == 1  # each face's own caption is true of it
        for j, spec in enumerate(specs):
            expected = all(facts.get(n) == v for n, v in spec.facts)
            assert bool(truth[i, j]) == expected
    assert caption(hair_colour="red", background="blue").text() == \
        "a face with red hair on a blue background"


def test_hair_never_takes_its_backgrounds_colour_and_twins_keep_the_rule() -> None:
    faces = faces_from_z(torch.randn(500, 32, generator=torch.Generator().manual_seed(1)))
    bg_names, hair_names = list(BACKGROUNDS), list(HAIR_COLOURS)
    for b, h in zip(faces.background.tolist(), faces.hair_colour.tolist()):
        assert bg_names[b] != hair_names[h]
    tw = twins(faces, torch.Generator().manual_seed(0))
    for b, h in zip(tw.background.tolist(), tw.hair_colour.tolist()):
        assert bg_names[b] != hair_names[h]
    moved = (tw.background != faces.background) | (tw.hair_colour != faces.hair_colour)
    assert float(moved.float().mean()) > 0.2


def test_shipped_face_models_check_and_eval_run_and_read_renders(tmp_path) -> None:
    """The shipped face generator draws faces near their renders, the judge reads renders
    exactly, and `coral eval --world faces` scores a (short) edit on the user's path."""
    from coral_core.cache import get_clip, get_generator
    from coral_core.world.assets import world_assets
    from coral_core.world.faces.check import check_faces
    from coral_core.world.faces.evaluate import format_table, run_face_eval
    from coral_core.world.faces.judge import judge_accuracy, load_face_judge

    where = world_assets("faces")
    G = get_generator(where.generator).generator
    judge = load_face_judge(where.judge)
    assert judge_accuracy(judge, n=64)["all exact"] >= 0.95
    result = check_faces(G, judge, None, n=32)
    figures = {r["figure"]: r["value"] for r in result["rows"]}
    assert figures["fidelity PSNR (dB, median)"] >= 26
    assert figures["part IoU background (median)"] >= 0.95
    out = run_face_eval(G, get_clip(where.clip), judge, [201], kinds=("background",),
                        steps=3, out=tmp_path, log=lambda *a: None)
    row = out["rows"][0]
    assert 0 <= row["change_interior"] <= 1 and 0 <= row["change_edge"] <= 1
    assert "psnr_outside" in row and "interior / edge" in format_table(out["summary"])
    assert "| coral_ss / background |" in format_table(out["summary"])
    assert (tmp_path / "eval.json").is_file()


def test_a_smile_shows_teeth_that_a_neutral_mouth_lacks() -> None:
    """A smile must differ from a neutral mouth by colour, not by a 1-px change of outline
    alone (the CLIP read the two as one at 64 px): the same faces, smiling and neutral, differ
    in the mouth by near-white pixels, and only inside the mouth's masks."""
    faces = random_faces(16, 5)
    smiling, m_s = render(faces.replace(mouth=torch.ones_like(faces.mouth)))
    neutral, m_n = render(faces.replace(mouth=torch.zeros_like(faces.mouth)))
    mouth = PARTS.index("mouth")
    for i in range(16):
        in_smile = m_s[i, mouth] > 0.5
        in_neutral = m_n[i, mouth] > 0.5
        # every channel past 0.65 of full (the side light dims a face to 0.78 of it)
        white_s = (smiling[i].amin(0) > 0.3) & in_smile
        white_n = (neutral[i].amin(0) > 0.3) & in_neutral
        assert int(white_s.sum()) >= 8, i
        assert int(white_n.sum()) == 0, i
        assert int(in_smile.sum()) > int(in_neutral.sum()), i
        changed = (smiling[i] - neutral[i]).abs().amax(0) > 1e-4
        assert not bool((changed & ~((m_s[i, mouth] + m_n[i, mouth]) > 0)).any()), i


def test_a_background_recolour_of_a_face_is_never_refused_as_lacking_a_background() -> None:
    """Fresh faces 252, 258 and 260 (green backgrounds): "a grey background" and "a purple
    background" were left unchanged as naming something the picture lacks (the CLIP's "a
    background" leans away from green). Every picture has a background; an image that lacks
    hair still has hair colours refused or trained as before (not asserted: this CLIP barely
    sees missing hair)."""
    from coral_core.cache import get_clip, get_generator
    from coral_core.editing.config import TrainConfig
    from coral_core.editing.trainer import train_edit
    from coral_core.world.assets import world_assets

    where = world_assets("faces")
    G = get_generator(where.generator).generator
    clip = get_clip(where.clip)
    ws = G.mapping_ws(G.z_from_seeds([252, 258, 260]))
    for prompt in ("a grey background", "a purple background"):
        edit = train_edit(G, clip, TrainConfig(prompt=prompt, steps=1, batch=3),
                          latents=ws).edit
        assert not any("lack" in w for w in edit.info.get("warnings", [])), prompt


def test_a_seed_and_kind_are_the_same_case_whatever_other_kinds_are_asked_for() -> None:
    """`coral eval --kinds` with a subset, or in another order, scores the same edits as the
    full run for the kinds they share (arms run with different --kinds are comparable)."""
    from coral_core.cache import get_generator
    from coral_core.world import assets
    from coral_core.world.evaluate import KINDS as SHAPE_KINDS
    from coral_core.world.evaluate import build_cases as shape_cases
    from coral_core.world.faces.evaluate import build_cases as face_cases

    for world, build, kinds in (("faces", face_cases, tuple(KINDS)),
                                ("shapes", shape_cases, SHAPE_KINDS)):
        G = get_generator(assets.world_assets(world).generator).generator
        seeds = [300, 301, 302]
        every = {(c.seed, c.kind): c.prompt for c in build(G, seeds, kinds)[0]}
        some = tuple(reversed(kinds[1::2]))
        picked = {(c.seed, c.kind): c.prompt for c in build(G, seeds, some)[0]}
        assert picked and picked == {k: v for k, v in every.items() if k[1] in some}, world
