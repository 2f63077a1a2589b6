"""Behaviour a user relies on, written so that each of the review's surviving seeded bugs
fails at least one test here (see scripts/mutation_check.py, which re-runs them)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from coral_core.editing.apply import apply_edits
from coral_core.editing.blend import blended_synthesis, stacked_synthesis
from coral_core.editing.catalogue import build_catalogue, resize_segments
from coral_core.editing.edit import Edit
from coral_core.editing.losses import LossWeights, area_loss, clip_loss, tv_loss
from coral_core.editing.trainer import TrainConfig, train_edit
from coral_core.editing.visualize import effective_mask
from coral_core.errors import ModelFormatError


def test_reused_original_features_stop_before_the_first_selected_layer(G) -> None:
    """Reusing the plain pass is an optimisation only: the image must equal the full blend."""
    ws = G.mapping_ws(G.z_from_seeds([1]))
    noise = G.make_noise(1, "const")
    delta = torch.randn_like(ws) * 0.5
    with torch.no_grad():
        _, feats = G.synthesize_with_features(ws, noise=noise)
        for first in range(1, len(G.conv_layers) + 1):
            masks = [None] * (first - 1) + [torch.ones(1, 1, c.resolution, c.resolution)
                                            for c in G.conv_layers[first - 1:]]
            full = blended_synthesis(G, ws, delta, masks, noise)
            fast = stacked_synthesis(G, ws, [(delta, masks)], noise, original_features=feats)
            assert torch.equal(full, fast), first


def test_directional_loss_uses_the_unit_image_direction(clip) -> None:
    """1 - cos(dI, dT): with a unit text direction the loss must stay in [0, 2] however far
    the image embedding moved."""
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    src = clip.encode_image(torch.zeros(2, 3, 32, 32))
    text_dir = F.normalize(torch.randn(1, src.shape[-1]), dim=-1)
    loss = clip_loss(clip, img, text_dir, src, text_dir)
    emb = clip.encode_image(img)
    expected = 1 - (F.normalize(emb - src, dim=-1) * text_dir).sum(-1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_the_area_weight_shrinks_the_masks(G, clip) -> None:
    # region pruning off in both: it switches pieces off whatever the area term says, and this
    # test is about the area term alone; so is the absent-object check (the tiny random models
    # draw nothing of "a red circle", so it would rightly leave the image as it was)
    # (and the random generator's salt-and-pepper clusters are kept as they are: handed on
    # as outline rings they would merge into one part, leaving the area term one weight)
    small = train_edit(G, clip, TrainConfig(prompt="a red circle", steps=25, batch=1, seed=3,
                                            weights=LossWeights(area=5.0), prune_tolerance=0,
                                            check_absent=False, dissolve_boundaries=False))
    free = train_edit(G, clip, TrainConfig(prompt="a red circle", steps=25, batch=1, seed=3,
                                           weights=LossWeights(area=0.0), prune_tolerance=0,
                                           check_absent=False, dissolve_boundaries=False))
    w_small = torch.sigmoid(small.edit.selector.logits).mean()
    w_free = torch.sigmoid(free.edit.selector.logits).mean()
    assert w_small < w_free - 0.05


def test_area_loss_is_the_weighted_sum_of_mask_means() -> None:
    masks = [torch.full((1, 1, 4, 4), 0.5), None, torch.full((1, 1, 8, 8), 0.25)]
    assert torch.allclose(area_loss(masks, [2.0, 7.0, 4.0]), torch.tensor(2.0))


def test_tv_loss_sees_both_directions() -> None:
    stripes_h = torch.zeros(1, 1, 8, 8)
    stripes_h[..., ::2, :] = 1  # changes only from row to row
    stripes_v = stripes_h.transpose(-1, -2).contiguous()
    assert tv_loss([stripes_h]) > 0.4 and torch.allclose(tv_loss([stripes_h]),
                                                         tv_loss([stripes_v]))


def test_the_l2_weight_shrinks_the_direction(G, clip) -> None:
    def norm(l2: float, prior: int = 0) -> float:
        # (no region contest: its winner's 15 steps would replace most of these 20)
        res = train_edit(G, clip, TrainConfig(prompt="a red circle", steps=20, batch=1,
                                              seed=2, weights=LossWeights(l2=l2),
                                              prior_samples=prior, contest_steps=0))
        return float(res.edit.direction.delta.norm())
    # from the paper's start near 0 (the prior's own start is tested in test_prior.py)
    assert norm(50.0) < 0.5 * norm(0.0)
    # from the prior's start too, the L2 pulls the direction in
    assert norm(50.0, 1024) < norm(0.0, 1024)


def test_catalogue_segments_are_area_averages_at_every_layer(G) -> None:
    cat = build_catalogue(G, k=4, samples=8)
    with torch.no_grad():
        _, feats = G.synthesize_with_features(G.mapping_ws(G.z_from_seeds([5])))
    seg = cat.segments(feats)
    full = seg.shape[-1]
    for c in G.conv_layers:
        got = resize_segments(seg, c.resolution)
        if c.resolution < full:
            k = full // c.resolution
            assert torch.allclose(got, F.avg_pool2d(seg, k), atol=1e-6)
        assert torch.allclose(got.sum(1), torch.ones_like(got.sum(1)), atol=1e-5)


def test_cluster_assignment_ignores_feature_magnitude(G) -> None:
    """Segments follow the direction of features (cosine), not their size: scaling one
    image's features must not change its segments."""
    cat = build_catalogue(G, k=4, samples=8)
    with torch.no_grad():
        _, feats = G.synthesize_with_features(G.mapping_ws(G.z_from_seeds([6])))
    scaled = [f * torch.linspace(0.1, 10, f.shape[-1]).view(1, 1, 1, -1) for f in feats]
    assert torch.equal(cat.segments(feats), cat.segments(scaled))


def test_demodulation_matches_the_reference_for_tiny_weights() -> None:
    """Demodulation divides by sqrt(sum w^2 + 1e-8); a larger epsilon changes layers whose
    weights are small, which real checkpoints have."""
    from coral_core.stylegan.ops import modulated_conv2d

    x = torch.randn(1, 4, 8, 8)
    w = torch.randn(4, 4, 3, 3) * 1e-3
    styles = torch.ones(1, 4)
    y = modulated_conv2d(x, w, styles, demodulate=True, up=1, resample_filter=None)
    ww = w[None] * styles[:, None, :, None, None]
    d = (ww.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    ref = F.conv2d(x, (ww * d[:, :, None, None, None])[0], padding=1)
    assert torch.allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_an_edit_from_a_future_version_is_refused(G, clip, tmp_path) -> None:
    from coral_core.formats.integrity import read_safetensors, write_safetensors

    res = train_edit(G, clip, TrainConfig(prompt="a red circle", steps=2, batch=1))
    path = res.edit.save(tmp_path / "e.safetensors")
    meta, tensors = read_safetensors(path, "edit")
    meta["format_version"] = "99"
    write_safetensors(tmp_path / "future.safetensors", tensors, meta)
    with pytest.raises(ModelFormatError, match="version '99'"):
        Edit.load(tmp_path / "future.safetensors")


def test_saved_edit_applies_identically_max_layer_included(G, clip, tmp_path) -> None:
    res = train_edit(G, clip, TrainConfig(prompt="a red circle", steps=4, batch=1,
                                          max_layer=3))
    loaded = Edit.load(res.edit.save(tmp_path / "e.safetensors"))
    assert loaded.max_layer == 3
    ws = res.edit.latents
    a, b = apply_edits(G, ws, [res.edit]), apply_edits(G, ws, [loaded])
    assert torch.equal(a.edited, b.edited)
    assert all(m is None for m in b.masks[0][3:])


def test_combined_mask_is_the_per_pixel_maximum() -> None:
    a = torch.zeros(1, 1, 4, 4)
    a[..., :2, :] = 1
    b = torch.zeros(1, 1, 4, 4)
    b[..., :, :2] = 0.5
    eff = effective_mask([a, None, b], 4)
    assert torch.equal(eff[0], torch.maximum(a, b)[0, 0])


def test_identity_loss_reads_only_the_face_crop() -> None:
    from coral_core.editing.identity import IRSE50, IdentityLoss

    torch.manual_seed(0)
    loss = IdentityLoss(IRSE50().train(False))
    img = torch.rand(1, 3, 256, 256) * 2 - 1
    corner = img.clone()
    corner[:, :, :30, :30] = 1.0  # outside the crop rows 35:223, cols 32:220
    centre = img.clone()
    centre[:, :, 100:150, 100:150] = 1.0
    with torch.no_grad():
        assert float(loss(corner, img)) < 1e-6
        assert float(loss(centre, img)) > 1e-4


def test_catalogues_are_cached_in_the_cache_folder_not_beside_outputs(G, clip, tmp_path,
                                                                      monkeypatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CORAL_CACHE_DIR", str(cache))
    out = tmp_path / "outputs"
    out.mkdir()
    res = train_edit(G, clip, TrainConfig(prompt="a red circle", steps=1, batch=1))
    res.edit.save(out / "e.safetensors")
    assert [p.name for p in out.iterdir()] == ["e.safetensors"]
    assert list(cache.glob("catalogue-*.safetensors"))


def test_per_image_edits_refuse_other_latents_unless_transferred(G, clip) -> None:
    from coral_core.errors import EditMismatchError

    res = train_edit(G, clip, TrainConfig(prompt="a red circle", steps=2, batch=2, seed=11))
    other = G.mapping_ws(G.z_from_seeds([100, 101]))
    with pytest.raises(EditMismatchError, match="transfer"):
        apply_edits(G, other, [res.edit])
    moved = apply_edits(G, other, [res.edit], transfer=True)
    assert moved.transferred == ["a red circle"]
    assert apply_edits(G, res.edit.latents, [res.edit]).transferred == []


def test_default_area_weights_make_coarse_layers_cost_more_by_their_spread(G) -> None:
    """'spread' (the default): a layer's area cost is proportional to how far a change there
    spreads (image side / layer resolution), normalised to mean 1; the 1/r^2 variant too."""
    from coral_core.editing.losses import LossWeights, area_betas

    res = [c.resolution for c in G.conv_layers]
    betas = area_betas(G, LossWeights())
    assert LossWeights().area_weighting == "spread"
    assert abs(sum(betas) / len(betas) - 1) < 1e-9
    for b, r in zip(betas, res):
        assert abs(b * r - betas[0] * res[0]) < 1e-9  # beta_l * r_l is one constant
    assert betas[0] > betas[-1]  # the coarsest layer costs the most
    squared = area_betas(G, LossWeights(area_weighting="spread_area"))
    for b, r in zip(squared, res):
        assert abs(b * r * r - squared[0] * res[0] ** 2) < 1e-9


def test_recomputed_activations_give_the_same_edit_gradients(G, clip, monkeypatch) -> None:
    """Activation recomputation trades memory for time only: the blended image and the
    gradients reaching the direction and the masks are the same, and the layers really run
    again in the backward pass."""
    from coral_core.editing import blend
    from coral_core.editing.blend import blended_synthesis

    calls = []
    original = blend.BlendRunner._blend_layer

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(blend.BlendRunner, "_blend_layer", counted)
    runs = []

    ws = G.mapping_ws(G.z_from_seeds([3, 4]))
    noise = G.make_noise(2, "const")
    grads = []
    for recompute in (False, True):
        delta = (torch.randn(1, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(0))
                 * 0.5).requires_grad_(True)
        masks = [torch.full((1, 1, c.resolution, c.resolution), 0.5, requires_grad=True)
                 for c in G.conv_layers]
        calls.clear()
        img = blended_synthesis(G, ws, delta, masks, noise, recompute=recompute)
        img.square().mean().backward()
        runs.append(len(calls))
        grads.append((img.detach(), delta.grad, [m.grad for m in masks]))
    assert runs[1] == 2 * runs[0] == 2 * len(G.conv_layers)
    (a_img, a_d, a_m), (b_img, b_d, b_m) = grads
    assert torch.equal(a_img, b_img)
    assert torch.allclose(a_d, b_d, atol=1e-7) and a_d.abs().max() > 0
    for x, y in zip(a_m, b_m):
        assert torch.allclose(x, y, atol=1e-7)


def test_leak_term_is_the_share_of_the_change_outside_the_finest_mask() -> None:
    from coral_core.editing.losses import leak_loss

    original = torch.zeros(1, 3, 8, 8)
    left = torch.zeros(1, 1, 8, 8)
    left[..., :4] = 1
    coarse = torch.ones(1, 1, 2, 2)  # coarser masks do not define the footprint
    inside = original.clone()
    inside[..., :4] = 0.5
    outside = original.clone()
    outside[..., 4:] = 0.5
    assert float(leak_loss(inside, original, [coarse, left])) < 1e-6
    assert abs(float(leak_loss(outside, original, [coarse, left])) - 1) < 1e-6
    half = original + 0.5
    assert abs(float(leak_loss(half, original, [None, left])) - 0.5) < 1e-6
    assert float(leak_loss(half, original, [None, None])) == 0


def test_directional_share_mixes_the_two_clip_terms(clip) -> None:
    from coral_core.editing.losses import clip_loss

    img = torch.rand(2, 3, 32, 32) * 2 - 1
    target = clip.encode_text(["a red circle"])
    src = clip.encode_image(torch.zeros(2, 3, 32, 32))
    direction = torch.nn.functional.normalize(target - clip.encode_text(["a blue circle"]), dim=-1)
    plain = clip_loss(clip, img, target)
    only_dir = clip_loss(clip, img, target, src, direction, 1.0)
    assert torch.allclose(clip_loss(clip, img, target, src, direction, 0.0), plain)
    mixed = clip_loss(clip, img, target, src, direction, 0.25)
    assert torch.allclose(mixed, 0.25 * only_dir + 0.75 * plain, atol=1e-6)
    assert not torch.allclose(only_dir, plain)


def test_memory_options_are_picked_from_the_free_cuda_memory(monkeypatch) -> None:
    """bf16 and recomputation switch on by themselves where a small card needs them (CUDA,
    512 px and up, under 16 GiB free), never on a large card or at small sizes; recomputation
    is also on for the CPU from 256 px (measured there: less memory and faster)."""
    from types import SimpleNamespace

    from coral_core.editing.memory import auto_bf16, auto_recompute

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    free = {"bytes": 6 * 2**30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"],
                                                                          80 * 2**30))
    big, small = SimpleNamespace(img_resolution=1024), SimpleNamespace(img_resolution=256)
    assert auto_bf16(big, cuda) and auto_recompute(big, cuda)
    assert not auto_bf16(small, cuda) and not auto_recompute(small, cuda)
    assert not auto_bf16(big, cpu) and auto_recompute(big, cpu) and auto_recompute(small, cpu)
    free["bytes"] = 40 * 2**30
    assert not auto_bf16(big, cuda) and not auto_recompute(big, cuda)


def test_bf16_flag_alone_means_on_and_defaults_to_automatic() -> None:
    from coral_core.cli import build_parser

    def parsed(*extra: str) -> str:
        return build_parser().parse_args(["train", "--prompt", "x", "--out", "e.safetensors",
                                          *extra]).bf16

    assert parsed() == "auto" and parsed("--bf16") == "on" and parsed("--bf16", "off") == "off"


@pytest.mark.parametrize("variant", ["ss", "can"])
def test_many_latents_apply_in_chunks_exactly_as_in_one_go(G, clip, variant) -> None:
    """A large batch is applied a few latents at a time (memory), with progress before each
    chunk; images, originals and every layer's masks are those of one call, stacked edits
    included, and a cancel raised by the progress stops it."""
    from coral_core.editing.apply import apply_in_chunks
    from coral_core.errors import CancelledError

    cfg = TrainConfig(prompt="a red circle", variant=variant, mode="per_prompt", steps=2,
                      batch=2, seed=1, check_fit=False, prior_samples=0)
    first = train_edit(G, clip, cfg).edit
    second = train_edit(G, clip, TrainConfig(**{**cfg.__dict__, "prompt": "a blue square"})).edit
    ws = G.mapping_ws(G.z_from_seeds(list(range(7))))
    whole = apply_edits(G, ws, [first, second], [1.0, 0.5])
    seen: list[tuple[int, int]] = []
    parts = apply_in_chunks(G, ws, [first, second], [1.0, 0.5], chunk=3,
                            progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 7), (3, 7), (6, 7), (7, 7)]
    # (equal up to float rounding: convolutions sum in another order for another batch size)
    assert torch.allclose(parts.edited, whole.edited, atol=1e-3)
    assert parts.original is not None and whole.original is not None
    assert torch.allclose(parts.original, whole.original, atol=1e-3)
    for mine, theirs in zip(parts.masks, whole.masks):
        for a, b in zip(mine, theirs):
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert a.shape == b.shape and torch.allclose(a, b, atol=1e-3)

    def cancel(done: int, total: int) -> None:
        if done:
            raise CancelledError("cancelled")
    with pytest.raises(CancelledError):
        apply_in_chunks(G, ws, [first], chunk=3, progress=cancel)
