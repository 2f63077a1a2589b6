"""A run's identity and record, and the per-prompt checkpoint that resumes only the same run.

Both the identity and the record are built from the config's fields, not from a hand list, so
that a setting added later (or a new ``--lr``) can never resume an old run's Adam state by
omission."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..clip_model import CoralClip
from ..stylegan import Generator
from .config import LossWeights, TrainConfig
from .selectors import AttentionSelector, SegmentSelector

# Fields that do not change what a run computes: how often it reports or saves, where it saves
# and caches. Every other TrainConfig field (present or added later) is part of a run's identity.
NOT_IDENTITY = frozenset({"progress_every", "checkpoint", "checkpoint_every", "catalogue_dir"})


def run_identity(cfg: TrainConfig, G: Generator, clip: CoralClip) -> str:
    """What must match for a checkpoint to be resumed (not the step count): the whole config
    but the fields in NOT_IDENTITY, and the generator's and the CLIP's identity (a same-shaped
    other generator must not resume)."""
    return repr((sorted(config_record(cfg).items()), G.fingerprint(), clip.model_id))


def config_record(cfg: TrainConfig) -> dict[str, Any]:
    """Every setting that shapes the run (all fields but NOT_IDENTITY), JSON-ready: the
    resume identity and the edit's own record of how it was made."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        if f.name in NOT_IDENTITY:
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, LossWeights):
            value = value.to_dict()
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def save_checkpoint(cfg: TrainConfig, run: str, direction: nn.Module, selector: nn.Module,
                    opt: torch.optim.Optimizer, step: int) -> None:
    """Write the per-prompt run's state (atomically) so that a killed run can resume."""
    from ..atomic import atomic_path

    assert cfg.checkpoint is not None
    with atomic_path(cfg.checkpoint) as tmp:
        # region pruning's decision, if taken yet
        gate = getattr(selector, "gate", None) if isinstance(selector, SegmentSelector) \
            else getattr(selector, "cluster_gate", None)
        torch.save({"direction": direction.state_dict(), "selector": selector.state_dict(),
                    "opt": opt.state_dict(), "step": step, "run": run,
                    **({"gate": gate} if gate is not None else {})}, tmp)


def resume(cfg: TrainConfig, run: str, direction: nn.Module, selector: nn.Module,
           opt: torch.optim.Optimizer) -> int:
    """The step to continue from: the checkpoint's, if it is this very run's; 0 otherwise.
    An unreadable (truncated) checkpoint is set aside with a note, never a blocker."""
    if cfg.checkpoint is None or cfg.mode != "per_prompt" or not Path(cfg.checkpoint).is_file():
        return 0
    try:
        from ..formats.weights import load_weights_file

        # the project's own reader: depth- and size-scanned before torch.load sees the file
        state = load_weights_file(cfg.checkpoint, "per-prompt training checkpoint")
        if state.get("run") != run:
            return 0  # a checkpoint of another run (other prompt, settings or models)
        direction.load_state_dict(state["direction"])
        selector.load_state_dict(state["selector"])
        opt.load_state_dict(state["opt"])
        if "gate" in state and isinstance(selector, SegmentSelector):
            selector.gate = state["gate"].to(selector.logits.device)
        elif "gate" in state and isinstance(selector, AttentionSelector):
            selector.cluster_gate = state["gate"]
        return int(state["step"])
    except Exception:  # noqa: BLE001 - truncated or corrupt: start afresh (replaced later)
        Path(cfg.checkpoint).unlink(missing_ok=True)
        return 0
