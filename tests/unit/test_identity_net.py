"""The optional identity loss as a user's ``model_ir_se50.pth`` sees it: the file's key layout
(formats.md §4.2), the network's output against a reference forward written from the published
layout (e4e/pSp's IR-SE50), the face crop at any resolution, and the loss's values and gradients.

Direct and fast (a few seconds): the trainer-level tests only check that the loss is wired in.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from coral_core.editing.identity import IRSE50, IdentityLoss, load_irse50
from coral_core.errors import ModelFormatError

# (depth, units) of the four IR-SE50 stages; the first unit of each stage halves the size.
STAGE_PLAN = ((64, 3), (128, 4), (256, 14), (512, 3))


def _random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the real layout with every tensor random, batch-norm statistics included
    (so that a forward pass in eval mode exercises every parameter), scaled as a trained
    network's are (weights by 1/sqrt(fan-in), scales near 1) so that the embedding depends on
    the image: at a flat 0.1 the 24 units' shifts swamped it."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in IRSE50().state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) * 0.4 + 0.8
        elif value.ndim >= 2:  # conv and linear weights
            state[key] = noise / value[0].numel() ** 0.5
        elif key.endswith(".weight") and not key.endswith(".2.weight"):  # BN scales
            state[key] = 1 + 0.1 * noise
        else:  # biases, BN means, PReLU slopes
            state[key] = 0.1 * noise
    return state


def _bn(x: torch.Tensor, s: dict, p: str) -> torch.Tensor:
    return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"],
                        s[p + ".bias"], training=False, eps=1e-5)


def _reference_forward(s: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """IR-SE50 from its published description, on a bare state dict: conv-BN-PReLU stem; per
    unit, BN, 3x3 conv, PReLU, 3x3 conv (stride on the second), BN, squeeze-excite (1/16),
    plus a shortcut (1x1 max-pool, or 1x1 conv + BN when the depth changes); then BN, flatten,
    linear to 512, BN1d, L2 normalisation."""
    x = F.prelu(_bn(F.conv2d(x, s["input_layer.0.weight"], padding=1), s, "input_layer.1"),
                s["input_layer.2.weight"])
    unit, in_ch = 0, 64
    for depth, count in STAGE_PLAN:
        for i in range(count):
            stride = 2 if i == 0 else 1
            p = f"body.{unit}"
            if in_ch == depth:
                short = x[:, :, ::stride, ::stride]
            else:
                short = _bn(F.conv2d(x, s[p + ".shortcut_layer.0.weight"], stride=stride), s,
                            p + ".shortcut_layer.1")
            r = _bn(x, s, p + ".res_layer.0")
            r = F.conv2d(r, s[p + ".res_layer.1.weight"], padding=1)
            r = F.prelu(r, s[p + ".res_layer.2.weight"])
            r = F.conv2d(r, s[p + ".res_layer.3.weight"], stride=stride, padding=1)
            r = _bn(r, s, p + ".res_layer.4")
            w = r.mean((2, 3), keepdim=True)
            w = torch.sigmoid(F.conv2d(F.relu(F.conv2d(w, s[p + ".res_layer.5.fc1.weight"])),
                                       s[p + ".res_layer.5.fc2.weight"]))
            x = r * w + short
            unit, in_ch = unit + 1, depth
    x = _bn(x, s, "output_layer.0").flatten(1)
    x = F.linear(x, s["output_layer.3.weight"], s["output_layer.3.bias"])
    x = _bn(x, s, "output_layer.4")
    return x / x.norm(dim=-1, keepdim=True)


def test_the_layout_is_that_of_the_released_file() -> None:
    shapes = {k: tuple(v.shape) for k, v in IRSE50().state_dict().items()}
    assert len(shapes) == 397  # formats.md §4.2, num_batches_tracked included
    assert shapes["input_layer.0.weight"] == (64, 3, 3, 3)
    assert shapes["input_layer.2.weight"] == (64,)
    assert shapes["output_layer.3.weight"] == (512, 512 * 7 * 7)
    assert shapes["output_layer.4.running_var"] == (512,)
    units = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("body.")})
    assert units == list(range(24))
    unit, in_ch = 0, 64
    for depth, count in STAGE_PLAN:
        for _ in range(count):
            p = f"body.{unit}"
            assert shapes[p + ".res_layer.1.weight"] == (depth, in_ch, 3, 3)
            assert shapes[p + ".res_layer.3.weight"] == (depth, depth, 3, 3)
            assert shapes[p + ".res_layer.5.fc1.weight"] == (depth // 16, depth, 1, 1)
            assert shapes[p + ".res_layer.5.fc2.weight"] == (depth, depth // 16, 1, 1)
            has_conv_shortcut = p + ".shortcut_layer.0.weight" in shapes
            assert has_conv_shortcut == (in_ch != depth)
            if has_conv_shortcut:
                assert shapes[p + ".shortcut_layer.0.weight"] == (depth, in_ch, 1, 1)
                assert shapes[p + ".shortcut_layer.1.running_mean"] == (depth,)
            assert (p + ".res_layer.1.bias") not in shapes and (p + ".res_layer.3.bias") not in shapes
            unit, in_ch = unit + 1, depth


def test_the_embedding_matches_the_published_network_on_any_weights(tmp_path: Path) -> None:
    state = _random_state(3)
    torch.save(state, tmp_path / "model_ir_se50.pth")
    net = load_irse50(tmp_path / "model_ir_se50.pth")
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    out = net(x)
    assert out.shape == (2, 512)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out, _reference_forward(state, x), atol=1e-4)
    assert float((out[0] * out[1]).sum()) < 0.9  # two images, two embeddings
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert torch.equal(net(x), out)  # eval mode: no dropout, fixed batch-norm statistics


def test_training_checkpoints_and_ddp_prefixes_load_too(tmp_path: Path) -> None:
    state = _random_state(4)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "c.pth")
    x = torch.randn(1, 3, 112, 112)
    assert torch.allclose(load_irse50(tmp_path / "c.pth")(x), _reference_forward(state, x),
                          atol=1e-4)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_a_file_of_another_layout_is_refused_with_its_name(tmp_path: Path, damage: str) -> None:
    state = _random_state(5)
    if damage == "missing":
        del state["output_layer.3.bias"]
    elif damage == "extra":
        state["head.weight"] = torch.zeros(3)
    else:
        state["input_layer.0.weight"] = torch.zeros(32, 3, 3, 3)
    path = tmp_path / "face.pth"
    torch.save(state, path)
    with pytest.raises(ModelFormatError) as err:
        load_irse50(path)
    assert str(path) in str(err.value) and "model_ir_se50.pth" in str(err.value)


class _RecordingNet(torch.nn.Module):
    """Stands in for the network: records what it is shown and embeds by the mean colour."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return F.normalize(x.mean((2, 3)), dim=-1)


@pytest.mark.parametrize("size", [256, 128, 512])
def test_the_face_crop_scales_with_the_image_and_is_pooled_to_112(size: int) -> None:
    net = _RecordingNet()
    loss = IdentityLoss(net)  # type: ignore[arg-type]
    s = size / 256
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = torch.stack([rows.float(), cols.float(), torch.ones(size, size)])[None]
    loss.embed(img)
    seen = net.seen[0]
    assert seen.shape == (1, 3, 112, 112)
    top, bottom, left, right = (round(35 * s), round(223 * s), round(32 * s), round(220 * s))
    expect = F.adaptive_avg_pool2d(img[:, :, top:bottom, left:right], 112)
    assert torch.allclose(seen, expect)


def test_the_loss_is_one_minus_the_cosine_and_learns_only_through_the_edit() -> None:
    loss = IdentityLoss(_RecordingNet())  # type: ignore[arg-type]
    original = torch.zeros(2, 3, 256, 256)
    original[:, 0] = 1.0
    assert float(loss(original.clone(), original)) == pytest.approx(0.0, abs=1e-6)
    orthogonal = torch.zeros(2, 3, 256, 256)
    orthogonal[:, 1] = 1.0
    assert float(loss(orthogonal, original)) == pytest.approx(1.0, abs=1e-6)
    opposite = -original
    assert float(loss(opposite, original)) == pytest.approx(2.0, abs=1e-6)
    mixed = torch.stack([original[0], orthogonal[0]])
    assert float(loss(mixed, original)) == pytest.approx(0.5, abs=1e-6)  # the batch's mean
    ref = original.clone().requires_grad_(True)
    edited = orthogonal.clone().requires_grad_(True)
    loss(edited, ref).backward()
    assert ref.grad is None and edited.grad is not None and edited.grad.abs().sum() > 0


def test_squeeze_excite_gates_each_channel_by_its_own_mean() -> None:
    from coral_core.editing.identity import SEModule

    se = SEModule(32)
    assert se.fc1.weight.shape == (2, 32, 1, 1) and se.fc1.bias is None
    with torch.no_grad():
        se.fc1.weight.fill_(0.0)
        se.fc2.weight.fill_(0.0)
    x = torch.randn(1, 32, 5, 5)
    assert torch.allclose(se(x), x * 0.5)  # sigmoid(0): every channel halved


def test_a_file_that_is_no_weights_file_is_refused_saying_what_was_expected(
        tmp_path: Path) -> None:
    path = tmp_path / "model_ir_se50.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelFormatError) as err:
        load_irse50(path)
    assert str(err.value).startswith(f"{path}: not a readable IR-SE50 weights file")


def test_the_refusal_quotes_what_torch_found_wrong_cut_short(tmp_path: Path) -> None:
    state = _random_state(6)
    for unit in range(24):  # a long list of missing keys: the quote is cut at 300 characters
        del state[f"body.{unit}.res_layer.4.weight"]
    torch.save(state, tmp_path / "face.pth")
    try:
        IRSE50().load_state_dict(state, strict=True)
    except RuntimeError as exc:
        torch_says = str(exc)
    assert len(torch_says) > 300
    with pytest.raises(ModelFormatError) as err:
        load_irse50(tmp_path / "face.pth")
    assert str(err.value) == (f"{tmp_path / 'face.pth'}: weights do not match the IR-SE50 "
                              f"layout (model_ir_se50.pth): {torch_says[:300]}")
