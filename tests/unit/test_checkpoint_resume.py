"""A per-prompt run's checkpoint, read back as the next run would: what it resumes (the
direction, the selection, the optimiser, the pruning decision of either selector) and when
it must start afresh instead."""
from __future__ import annotations

from pathlib import Path

import torch

from coral_core.editing.config import TrainConfig
from coral_core.editing.directions import GlobalDirection
from coral_core.editing.run_record import resume, save_checkpoint
from coral_core.editing.selectors import AttentionSelector, SegmentSelector
from config_values import other_value

RUN = "run-a"


def _state(selector_kind: str, seed: int):
    torch.manual_seed(seed)
    direction = GlobalDirection(num_ws=4, w_dim=3, seed=seed)
    selector = SegmentSelector(num_layers=3, k=4) if selector_kind == "ss" else \
        AttentionSelector([5, 6, 7])
    with torch.no_grad():
        for p in selector.parameters():
            p.add_(torch.randn_like(p))
    opt = torch.optim.Adam([*direction.parameters(), *selector.parameters()], lr=0.01)
    loss = direction.delta.square().sum() + sum(p.sum() for p in selector.parameters())
    loss.backward()
    opt.step()
    return direction, selector, opt


def _cfg(path: Path, mode: str = "per_prompt") -> TrainConfig:
    return TrainConfig(prompt="a red square", mode=mode, checkpoint=path)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_segment_selection_run_resumes_with_its_pruning_decision(tmp_path) -> None:
    path = tmp_path / "run.ckpt.pt"
    direction, selector, opt = _state("ss", 1)
    selector.gate = torch.tensor([[[1.0, 0.0, 1.0, 0.0]] * 3])
    save_checkpoint(_cfg(path), RUN, direction, selector, opt, step=37)
    d2, s2, o2 = _state("ss", 2)
    assert resume(_cfg(path), RUN, d2, s2, o2) == 37
    assert _same(direction, d2) and _same(selector, s2)
    assert torch.equal(s2.gate, selector.gate)
    assert o2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert torch.equal(o2.state_dict()["state"][0]["exp_avg"],
                       opt.state_dict()["state"][0]["exp_avg"])


def test_an_attention_run_resumes_with_the_clusters_pruning_kept(tmp_path) -> None:
    path = tmp_path / "run.ckpt.pt"
    direction, selector, opt = _state("can", 1)
    selector.cluster_gate = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]])
    save_checkpoint(_cfg(path), RUN, direction, selector, opt, step=12)
    d2, s2, o2 = _state("can", 2)
    assert resume(_cfg(path), RUN, d2, s2, o2) == 12
    assert _same(selector, s2)
    assert s2.cluster_gate is not None and torch.equal(s2.cluster_gate, selector.cluster_gate)


def test_a_run_saved_before_pruning_resumes_without_a_gate(tmp_path) -> None:
    for kind in ("ss", "can"):
        path = tmp_path / f"{kind}.ckpt.pt"
        direction, selector, opt = _state(kind, 1)
        save_checkpoint(_cfg(path), RUN, direction, selector, opt, step=5)
        d2, s2, o2 = _state(kind, 2)
        assert resume(_cfg(path), RUN, d2, s2, o2) == 5, kind
        assert getattr(s2, "gate" if kind == "ss" else "cluster_gate") is None
        assert path.is_file()  # a good checkpoint is kept


def test_another_run_s_checkpoint_is_not_resumed(tmp_path) -> None:
    path = tmp_path / "run.ckpt.pt"
    direction, selector, opt = _state("ss", 1)
    save_checkpoint(_cfg(path), RUN, direction, selector, opt, step=9)
    d2, s2, o2 = _state("ss", 2)
    before = {k: v.clone() for k, v in s2.state_dict().items()}
    assert resume(_cfg(path), "run-b", d2, s2, o2) == 0
    assert all(torch.equal(before[k], v) for k, v in s2.state_dict().items())


def test_only_a_per_prompt_run_with_a_checkpoint_file_resumes(tmp_path) -> None:
    path = tmp_path / "run.ckpt.pt"
    direction, selector, opt = _state("ss", 1)
    save_checkpoint(_cfg(path), RUN, direction, selector, opt, step=9)
    d2, s2, o2 = _state("ss", 2)
    # per image: every run starts afresh, even beside a matching checkpoint
    assert resume(_cfg(path, mode="per_image"), RUN, d2, s2, o2) == 0
    assert not _same(direction, d2)
    assert resume(TrainConfig(prompt="a red square", mode="per_prompt"), RUN, d2, s2, o2) == 0
    assert resume(_cfg(tmp_path / "missing.ckpt.pt"), RUN, d2, s2, o2) == 0


def test_a_truncated_checkpoint_is_set_aside_and_the_run_starts_afresh(tmp_path) -> None:
    path = tmp_path / "run.ckpt.pt"
    direction, selector, opt = _state("ss", 1)
    save_checkpoint(_cfg(path), RUN, direction, selector, opt, step=9)
    path.write_bytes(path.read_bytes()[:200])
    d2, s2, o2 = _state("ss", 2)
    assert resume(_cfg(path), RUN, d2, s2, o2) == 0
    assert not path.exists()


def test_a_setting_added_later_is_recorded_json_ready() -> None:
    """The record is built from the config's fields, so a field added later (a path, a
    tuple) is in it, in a form the edit file's JSON metadata can hold."""
    import json
    from dataclasses import dataclass, field

    from coral_core.editing.run_record import NOT_IDENTITY, config_record

    @dataclass
    class Later(TrainConfig):
        reference: Path = Path("refs/a.png")
        window: tuple = (2, 5)
        notes: list = field(default_factory=lambda: ["x"])

    record = config_record(Later(prompt="a red square", checkpoint=Path("c.pt")))
    assert record["reference"] == "refs/a.png" and record["window"] == [2, 5]
    assert record["notes"] == ["x"] and record["prompt"] == "a red square"
    assert isinstance(record["weights"], dict) and record["weights"]["area"] == 0.02
    assert not NOT_IDENTITY & record.keys()
    json.dumps(record)  # nothing a JSON header cannot hold


def test_every_setting_but_where_and_how_often_it_saves_is_part_of_a_run_s_identity() -> None:
    from dataclasses import fields, replace
    from types import SimpleNamespace

    from coral_core.editing.run_record import NOT_IDENTITY, run_identity

    G = SimpleNamespace(fingerprint=lambda: "generator-a")
    clip = SimpleNamespace(model_id="clip-a")
    cfg = TrainConfig(prompt="a red square")
    base = run_identity(cfg, G, clip)
    assert base == run_identity(TrainConfig(prompt="a red square"), G, clip)
    for f in fields(TrainConfig):
        changed = run_identity(replace(cfg, **{f.name: other_value(f.name, getattr(cfg, f.name))}),
                               G, clip)
        assert (changed == base) == (f.name in NOT_IDENTITY), f.name
    assert run_identity(cfg, SimpleNamespace(fingerprint=lambda: "generator-b"), clip) != base
    assert run_identity(cfg, G, SimpleNamespace(model_id="clip-b")) != base
