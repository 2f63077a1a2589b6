"""Memory choices and the pictures of a selection, as a user meets them: chunk sizes for
renders without gradients, the automatic memory options, the line that reports them, the
per-layer mask grid, the combined mask and the heatmap overlay."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from coral_core.editing.config import TrainConfig
from coral_core.editing.memory import (CHUNK_MEMORY_BYTES, auto_bf16, auto_recompute,
                                       describe_memory_options, images_per_chunk, memory_plan)
from coral_core.editing.selectors import SegmentSelector
from coral_core.editing.visualize import (effective_mask, layer_labels, mask_grid, overlay,
                                          selection_summary)

CPU = torch.device("cpu")


def _G(resolution: int = 64, layers=((512, 512, 4), (512, 256, 64))) -> SimpleNamespace:
    conv = [SimpleNamespace(in_channels=i, out_channels=o, resolution=r, index=n + 1)
            for n, (i, o, r) in enumerate(layers)]
    return SimpleNamespace(img_resolution=resolution, conv_layers=conv)


def test_a_chunk_is_sized_by_the_widest_layer_within_the_budget() -> None:
    # widest: 256 ch at 64 px -> 6 * 256 * 64^2 * 4 B + 2 * 512 * 256 * 9 * 4 B
    per_image = 6 * 256 * 64 ** 2 * 4 + 2 * 512 * 256 * 9 * 4
    G = _G()
    assert images_per_chunk(G, budget=10 * per_image) == 10
    assert images_per_chunk(G, passes=2, budget=10 * per_image) == 5
    assert images_per_chunk(G, budget=10 * per_image - 1) == 9
    assert images_per_chunk(G, budget=1) == 1                     # never none
    assert images_per_chunk(G, budget=1000 * per_image) == 64     # at most 64
    big = _G(1024, ((512, 512, 4), (64, 32, 1024)))
    assert images_per_chunk(big) == max(1, CHUNK_MEMORY_BYTES // (6 * 32 * 1024 ** 2 * 4
                                                                  + 2 * 64 * 32 * 9 * 4))


def test_memory_options_follow_the_config_or_the_automatic_rule_on_the_cpu() -> None:
    small, large = _G(128), _G(256)
    assert not auto_recompute(small, CPU) and auto_recompute(large, CPU)
    assert not auto_bf16(large, CPU)  # never on the CPU
    auto = memory_plan(TrainConfig(prompt="p"), large, CPU)
    assert auto.recompute and not auto.bf16
    forced = memory_plan(TrainConfig(prompt="p", recompute=False, bf16=True), large, CPU)
    assert not forced.recompute and not forced.bf16  # bf16 autocast is CUDA's alone
    assert memory_plan(TrainConfig(prompt="p", recompute=True), small, CPU).recompute
    assert forced.as_info() == {"recompute_activations": False, "bf16": False}


def test_the_options_line_names_each_option_and_its_state() -> None:
    assert describe_memory_options({"recompute_activations": True, "bf16": False}) == \
        "recompute_activations on, bf16 off"
    assert describe_memory_options({}) == ""


def _masks() -> list[torch.Tensor | None]:
    low = torch.zeros(2, 1, 4, 4)
    low[0, :, :, :2] = 1.0
    high = torch.zeros(2, 1, 8, 8)
    high[1] = 0.5
    return [low, None, high]


G3 = SimpleNamespace(conv_layers=[SimpleNamespace(index=i + 1, resolution=r)
                                  for i, r in enumerate((4, 4, 8))])


def test_layer_labels_name_layer_resolution_and_mean_area() -> None:
    assert layer_labels(G3, _masks()) == ["L1 4px 0.25", "L2 4px 0.00", "L3 8px 0.25"]


def test_the_mask_grid_shows_one_tile_per_layer_for_the_chosen_picture() -> None:
    cell = 32
    grid = mask_grid(G3, _masks(), sample=0, cell=cell)
    assert grid.shape == (cell + 14, 3 * cell, 3) and grid.dtype == np.uint8
    tile0 = grid[14:, :cell]
    assert tile0[:, : cell // 2].min() == 255 and tile0[:, cell // 2:].max() == 0
    assert grid[14:, cell:2 * cell].max() == 0  # no mask at layer 2: black
    other = mask_grid(G3, _masks(), sample=1, cell=cell)
    assert other[14:, 2 * cell:].min() == 127   # picture 1's half-strength mask
    many = mask_grid(SimpleNamespace(conv_layers=G3.conv_layers * 4), _masks() * 4, cell=cell)
    assert many.shape == (2 * (cell + 14), 8 * cell, 3)  # eight tiles a row


def test_the_combined_mask_is_the_largest_layer_mask_at_each_pixel() -> None:
    mask = effective_mask(_masks(), 16)
    assert mask.shape == (2, 16, 16)
    assert float(mask[0, 8, 1]) == 1.0 and float(mask[0, 8, 14]) == 0.0
    assert torch.allclose(mask[1], torch.full((16, 16), 0.5))
    with pytest.raises(ValueError, match="no layer"):
        effective_mask([None, None], 16)
    assert float(effective_mask([torch.full((1, 1, 2, 2), 3.0)], 4).max()) == 1.0


def test_the_overlay_tints_only_where_the_mask_is() -> None:
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1.0
    out = overlay(image, mask, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert (out[:, :3] == 100).all()                      # untouched left
    assert out[0, 7].tolist() == [177, 177, 50]           # half way to yellow on the right


def test_the_selection_summary_lists_pairs_layers_and_segments() -> None:
    sel = SegmentSelector(num_layers=3, k=4, init=0.1)
    with torch.no_grad():
        sel.logits[0, 0, 2] = 4.0
        sel.logits[0, 2, 2] = 4.0
        sel.logits[0, 2, 0] = 1.0
    summary = selection_summary(None, SimpleNamespace(selector=sel))
    assert summary["selection"] == {"pairs": [(1, 2), (3, 0), (3, 2)], "layers": [1, 3],
                                    "segments": [0, 2]}
    assert summary["segment_weights"][0] == pytest.approx([0.1, 0.1, 0.982, 0.1], abs=1e-6)
    assert selection_summary(None, SimpleNamespace(selector=object())) == {}


def test_bf16_autocast_is_cuda_s_and_only_when_chosen() -> None:
    import contextlib

    from coral_core.editing.memory import MemoryPlan

    assert isinstance(MemoryPlan(recompute=False, bf16=False).autocast(),
                      contextlib.nullcontext)
    ctx = MemoryPlan(recompute=False, bf16=True).autocast()
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda"
    assert ctx.fast_dtype == torch.bfloat16


def test_on_a_cuda_device_the_config_or_the_free_memory_decides(monkeypatch) -> None:
    cuda = torch.device("cuda")
    small = _G(256)
    chosen = memory_plan(TrainConfig(prompt="p", bf16=True, recompute=True), small, cuda)
    assert chosen.bf16 and chosen.recompute
    auto = memory_plan(TrainConfig(prompt="p"), small, cuda)  # under 512 px: never tight
    assert not auto.bf16 and not auto.recompute
    big = _G(512)
    for free, tight in ((16 * 2**30 - 1, True), (16 * 2**30, False)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, f=free: (f, 80 * 2**30))
        assert auto_recompute(big, cuda) is tight and auto_bf16(big, cuda) is tight
        assert not auto_recompute(_G(511), cuda)
        assert memory_plan(TrainConfig(prompt="p"), big, cuda).bf16 is tight


def test_the_grid_s_defaults_frame_and_label_colours() -> None:
    masks = _masks()
    grid = mask_grid(G3, masks)
    assert grid.shape == (96 + 14, 3 * 96, 3)          # sample 0, 96-px tiles by default
    assert grid[3, 95].tolist() == [30, 30, 30]         # the label strip's background
    strip = grid[:14].reshape(-1, 3)
    yellow = (strip[:, 0] > 200) & (strip[:, 1] > 200) & (strip[:, 2] < 80)
    assert yellow.any()                                 # yellow label text
    over = [torch.full((1, 1, 4, 4), 1.5)]              # a mask above 1 shows as full white
    one = SimpleNamespace(conv_layers=G3.conv_layers[:1])
    assert mask_mid(mask_grid(one, over, cell=16)) == 255
    nine = SimpleNamespace(conv_layers=G3.conv_layers * 3)
    grid9 = mask_grid(nine, masks * 3, cell=16)
    assert grid9[-1, -1].tolist() == [20, 20, 20]       # an empty place in the last row


def mask_mid(grid: np.ndarray) -> int:
    return int(grid[14 + grid.shape[1] // 2, grid.shape[1] // 2, 0])


def test_the_grid_of_one_picture_is_that_picture_s_alone() -> None:
    masks = _masks()
    for sample in (0, 1):
        alone = [None if m is None else m[sample:sample + 1] for m in masks]
        assert np.array_equal(mask_grid(G3, masks, sample=sample),  # labels in full at 96 px
                              mask_grid(G3, alone, sample=0))


def test_the_combined_mask_reads_coarse_masks_at_pixel_centres() -> None:
    coarse = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    mask = effective_mask([coarse, None, torch.zeros(1, 1, 8, 8)], 8)
    assert mask.shape == (1, 8, 8)
    assert float(mask[0, 4, 2]) == pytest.approx(0.875)
    with pytest.raises(ValueError) as err:
        effective_mask([None], 8)
    assert str(err.value) == "no layer is selected"


def test_the_overlay_s_default_strength_and_a_coarse_mask() -> None:
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    out = overlay(image, torch.full((8, 8), 2.0))  # above 1 counts as 1; alpha 0.55
    assert out[0, 0].tolist() == [185, 185, 45]
    coarse = overlay(image, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), alpha=1.0)
    assert coarse[4, 2].tolist() == [235, 207, 12]  # 0.875 of the way to [255, 223, 0]


def test_the_summary_rounds_weights_to_three_places() -> None:
    sel = SegmentSelector(num_layers=1, k=1)
    with torch.no_grad():
        sel.logits.fill_(3.0)
    summary = selection_summary(None, SimpleNamespace(selector=sel))
    assert summary["segment_weights"][0][0] == pytest.approx(0.953, abs=1e-6)


def test_each_tile_s_label_shows_its_mask_s_area() -> None:
    one = SimpleNamespace(conv_layers=G3.conv_layers[:1])
    half = mask_grid(one, [torch.full((1, 1, 4, 4), 0.5)])
    none = mask_grid(one, [torch.zeros(1, 1, 4, 4)])
    assert not np.array_equal(half[:14], none[:14])  # "L1 4px 0.50" against "... 0.00"
