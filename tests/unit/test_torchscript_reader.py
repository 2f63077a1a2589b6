"""The TorchScript reader (OpenAI CLIP ``.pt`` files) as a file would meet it: real scripted
archives read to the same tensors, typed attributes read as data, and hand-built ``data.pkl``
files for the shapes no exporter writes (a bare ``__torch__`` class, a module tree of a given
depth, an object that contains itself, a root that is not a module, helpers it does not know)."""
from __future__ import annotations

import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from coral_core.errors import ModelFormatError, UnsafeFileError
from coral_core.formats.torchscript import read_torchscript_tensors


class _Leaf(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.arange(2.0) + 1)
        self.table = {"a": [1, 2]}      # pickled through restore_type_tag and build_intlist
        self.scales = [1.0, 2.0]        # build_doublelist

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class _Pair(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = _Leaf()
        self.second = _Leaf()
        self.b = torch.nn.Parameter(torch.full((3,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.first(x) + self.second(x)


def _archive(tmp_path: Path, data: bytes, name: str = "model.pt",
             storages: dict[str, bytes] | None = None) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data)
        for key, raw in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", raw)
    return path


def _tensor(storage_key: str, n: int) -> bytes:
    """A float32 tensor of n values kept in storage ``storage_key``, pickled as torch does
    (_rebuild_tensor_v2 over a persistent storage id)."""
    pid = (b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text(storage_key)
           + _text("cpu") + b"K" + bytes([n]) + b"tQ")
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00(K" + bytes([n]) + b"t(K\x01t"
            + b"\x88ccollections\nOrderedDict\n)RtR")


def _text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _record(module: str, name: str, attributes: bytes = b"", memo: int | None = None) -> bytes:
    """An object of a scripted class as TorchScript pickles it: GLOBAL, NEWOBJ, a state
    dict built with SETITEMS, BUILD (memoised under ``memo`` when given)."""
    put = b"q" + bytes([memo]) if memo is not None else b""
    return (b"c" + module.encode() + b"\n" + name.encode() + b"\n" + b")\x81" + put
            + b"}(" + attributes + b"ub")


def _chain(depth: int) -> bytes:
    """A module tree ``depth`` levels below its root (the root is level 0)."""
    inner = _record("__torch__", "Leaf")
    for _ in range(depth):
        inner = _record("__torch__", "Wrap", _text("inner") + inner)
    return b"\x80\x02" + inner + b"."


def test_a_scripted_module_reads_to_its_own_tensors_and_typed_attributes_are_data(
        tmp_path: Path) -> None:
    model = _Pair()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
    path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(path))
    assert b"restore_type_tag" in zipfile.ZipFile(path).read(
        next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("data.pkl")))
    tensors = read_torchscript_tensors(path)
    expected = model.state_dict()
    assert set(tensors) == set(expected)
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), key


def test_module_trees_are_read_to_their_depth_limit_and_refused_past_it(tmp_path: Path) -> None:
    path = _archive(tmp_path, _chain(3))
    assert read_torchscript_tensors(path, max_depth=3) == {}
    with pytest.raises(ModelFormatError, match=r"model\.pt: module tree deeper than 2 levels"):
        read_torchscript_tensors(path, max_depth=2)
    assert read_torchscript_tensors(_archive(tmp_path, _chain(0), "flat.pt"), max_depth=0) == {}


def test_an_object_that_contains_itself_is_read_once(tmp_path: Path) -> None:
    # the root's state names the root again (a memo fetch): the walk must end
    loop = b"\x80\x02" + _record("__torch__", "Net", _text("me") + b"h\x00", memo=0) + b"."
    assert read_torchscript_tensors(_archive(tmp_path, loop), max_depth=4) == {}
    # a child met under two names, deeper than the limit allows only by the second path
    shared = _record("__torch__.m", "Child", memo=1)
    dag = b"\x80\x02" + _record("__torch__.m", "Net", _text("a") + shared + _text("b") + b"h\x01",
                                memo=0) + b"."
    assert read_torchscript_tensors(_archive(tmp_path, dag, "dag.pt"), max_depth=1) == {}


def test_a_module_met_twice_does_not_end_the_walk(tmp_path: Path) -> None:
    # the walk meets the shared child a second time before it reaches the weights' module
    shared = _record("__torch__.m", "Child", memo=1)
    holder = _record("__torch__.m", "Holder", _text("w") + _tensor("0", 2))
    root = _record("__torch__.m", "Net", _text("c") + holder + _text("a") + shared
                   + _text("b") + b"h\x01", memo=0)
    path = _archive(tmp_path, b"\x80\x02" + root + b".",
                    storages={"0": struct.pack("<2f", 1.5, -2.0)})
    tensors = read_torchscript_tensors(path)
    assert list(tensors) == ["c.w"] and tensors["c.w"].tolist() == [1.5, -2.0]


def test_a_module_without_state_has_no_tensors(tmp_path: Path) -> None:
    bare = b"\x80\x02c__torch__\nNet\n)\x81."
    assert read_torchscript_tensors(_archive(tmp_path, bare)) == {}


def test_a_root_that_is_not_a_module_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ModelFormatError, match=r"weights\.pt: TorchScript archive whose "
                                               r"data\.pkl is not a module"):
        read_torchscript_tensors(path)


@pytest.mark.parametrize("module, name", [("torch.jit._pickle", "build_tensor_from_id"),
                                          ("torch.jit._pickle", "restore_type_tagx"),
                                          ("__torch_evil__", "Net")])
def test_helpers_and_classes_it_does_not_know_are_refused(tmp_path: Path, module: str,
                                                          name: str) -> None:
    data = (b"\x80\x02" + _record("__torch__", "Net", _text("x") + b"c" + module.encode()
                                  + b"\n" + name.encode() + b"\n" + b"(K\x01tR") + b".")
    with pytest.raises((UnsafeFileError, ModelFormatError), match="model.pt"):
        read_torchscript_tensors(_archive(tmp_path, data))


def test_a_pickled_list_helper_makes_a_plain_list(tmp_path: Path) -> None:
    data = (b"\x80\x02" + _record("__torch__", "Net", _text("x") + b"ctorch.jit._pickle\n"
                                  b"build_intlist\n(](K\x01K\x02etR") + b".")
    assert read_torchscript_tensors(_archive(tmp_path, data)) == {}
