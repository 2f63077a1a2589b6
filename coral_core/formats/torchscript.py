"""Reading TorchScript archives (OpenAI CLIP ``ViT-*.pt`` ...) as data, never as programs.

``torch.jit.load`` runs the archive's TorchScript: a crafted "CLIP" file can carry a
``__setstate__`` that calls ``torch.from_file(path, shared=True)`` and writes any bytes to any
path while loading (a ``.pth`` in site-packages then runs a shell command at the next Python
start). So no user file ever goes through ``torch.jit.load``. Instead the archive's ``data.pkl``
is unpickled under the project's restricted unpickler: every ``__torch__.*`` class becomes an
inert ``ScriptObjectRecord`` (its state is stored, its methods never exist, so a scripted
``__setstate__`` is data we ignore), tensors are rebuilt from the archive's storages, and the
module tree is flattened into a state dict. The ``code/`` folder is never read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFormatError
from .safe_pickle import RestrictedUnpickler, load_torch_zip


class ScriptObjectRecord:
    """A TorchScript object reduced to its pickled state (a dict of attributes, or whatever a
    custom ``__getstate__`` produced, kept as ``raw_state``)."""

    def __init__(self, class_name: str) -> None:
        self.class_name = class_name
        self.attributes: dict[str, Any] = {}
        self.raw_state: Any = None

    def __setstate__(self, state: Any) -> None:
        # Called by pickle's BUILD; stores the state only. The archive's own __setstate__
        # (TorchScript code in code/) is never looked at.
        if isinstance(state, dict):
            self.attributes = {str(k): v for k, v in state.items()}
        else:
            self.raw_state = state


def _record_class(qualified: str) -> type:
    """A fresh inert class per scripted class name: NEWOBJ/REDUCE build it without running
    anything, BUILD stores the state."""

    class Record(ScriptObjectRecord):
        def __new__(cls, *args: Any, **kwargs: Any) -> "Record":
            obj = object.__new__(cls)
            ScriptObjectRecord.__init__(obj, qualified)
            return obj

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

    return Record


def _as_list(values: Any) -> list:
    return list(values)


def _restore_type_tag(value: Any, _type: Any = None) -> Any:
    return value


# TorchScript's pickler wraps typed lists in these helpers; here they only make lists.
_SCRIPT_LIST_BUILDERS = {"build_intlist", "build_tensorlist", "build_doublelist",
                         "build_boollist", "build_genericlist"}


class _ScriptUnpickler(RestrictedUnpickler):
    """The restricted unpickler plus inert stand-ins for ``__torch__.*`` classes and
    TorchScript's list helpers (rebuilt as plain lists; nothing of torch.jit is called)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _record_class(f"{module}.{name}")
        if module == "torch.jit._pickle" and name in _SCRIPT_LIST_BUILDERS:
            return _as_list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _restore_type_tag
        return super().find_class(module, name)


def read_torchscript_tensors(path: Path, max_depth: int = 64) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the archive's module tree, keyed by its dotted path
    ("visual.conv1.weight"), read without executing anything from the file."""
    root = load_torch_zip(path, _ScriptUnpickler)
    if not isinstance(root, ScriptObjectRecord):
        raise ModelFormatError(f"{path}: TorchScript archive whose data.pkl is not a module")
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    stack: list[tuple[str, ScriptObjectRecord, int]] = [("", root, 0)]
    while stack:  # iterative, and each object visited once: no recursion, no DAG blow-up
        prefix_key, obj, depth = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if depth > max_depth:
            raise ModelFormatError(f"{path}: module tree deeper than {max_depth} levels")
        for name, value in obj.attributes.items():
            key = f"{prefix_key}{name}"
            if isinstance(value, torch.Tensor):
                out[key] = value
            elif isinstance(value, ScriptObjectRecord):
                stack.append((key + ".", value, depth + 1))
    return out
