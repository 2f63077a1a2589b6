"""The restricted pickle reader at its edges, as a model file meets it: what an allowed
file reads back as (exactly), what a file that asks for anything else gets (a named refusal,
nothing run), and where the reader's bounds sit (nesting depth, archive sizes, storages).
"""
from __future__ import annotations

import collections
import hashlib
import io
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from coral_core.errors import ModelFormatError, UnsafeFileError
from coral_core.formats import safe_pickle as sp


def _call(module: str, name: str, args: tuple) -> bytes:
    """A protocol-2 pickle that calls ``module.name(*args)``: how a file asks for a global."""
    body = pickle.dumps(args, protocol=2)[2:-1]
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + body + b"R."


def _plain(tmp_path: Path, data: bytes, name: str = "net.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _meta(**over: object) -> dict:
    meta = {"type": "class", "version": sp.PERSISTENCE_VERSION, "module_src": "class G: pass",
            "class_name": "training.networks.Generator",
            "state": {"z_dim": 512, "_modules": {"mapping": 1}}}
    meta.update(over)
    return meta


# ---- what an allowed file reads back as -------------------------------------------------

def test_plain_data_reads_back_exactly(tmp_path: Path) -> None:
    value = {"ordered": collections.OrderedDict([("b", 1), ("a", 2)]), "set": {1, 2},
             "frozen": frozenset({"x"}), "bytes": b"\x00\xff\x80", "array":
             np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.float64(2.5)}
    got = sp.load_plain_pickle(_plain(tmp_path, pickle.dumps(value, protocol=2)))
    assert list(got["ordered"].items()) == [("b", 1), ("a", 2)]
    assert isinstance(got["ordered"], collections.OrderedDict)
    assert got["set"] == {1, 2} and got["frozen"] == frozenset({"x"})
    assert got["bytes"] == b"\x00\xff\x80"  # protocol 2 spells bytes as _codecs.encode latin1
    assert got["array"].dtype == np.float32 and got["array"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert got["scalar"] == 2.5


@pytest.mark.parametrize("encoding", ["latin1", "latin-1", "LATIN1", "iso-8859-1",
                                      "ISO8859-1"])
def test_bytes_spelled_with_any_latin1_name_read_back(tmp_path: Path, encoding: str) -> None:
    data = _call("_codecs", "encode", ("\u00e9\u00ff", encoding))
    assert sp.load_plain_pickle(_plain(tmp_path, data)) == b"\xe9\xff"


@pytest.mark.parametrize("encoding", ["utf-8", "rot13", "base64", "latin2"])
def test_codecs_encode_with_another_encoding_is_refused(tmp_path: Path, encoding: str) -> None:
    with pytest.raises(UnsafeFileError, match=encoding):
        sp.load_plain_pickle(_plain(tmp_path, _call("_codecs", "encode", ("x", encoding))))


def test_an_nvlabs_record_becomes_inert_data_with_its_source_hashed(tmp_path: Path) -> None:
    src = "import os\nos.system('echo owned')\nclass Generator: pass\n" * 200
    data = _call("torch_utils.persistence", "_reconstruct_persistent_obj",
                 (_meta(module_src=src),))
    record = sp.load_plain_pickle(_plain(tmp_path, data))
    assert isinstance(record, sp.PersistentRecord)
    assert record.class_name == "training.networks.Generator"
    assert record.module_src_sha256 == hashlib.sha256(src.encode()).hexdigest()
    assert record.module_src_head == src[:4000] and len(src) > 4000
    assert record.attr("z_dim") == 512 and record.attr("missing", "d") == "d"
    assert record.modules == {"mapping": 1}
    assert "module_src_head" not in repr(record)


def test_an_nvlabs_record_with_its_source_as_bytes_hashes_the_same(tmp_path: Path) -> None:
    src = "class Generator: pass\n"
    data = _call("torch_utils.persistence", "_reconstruct_persistent_obj",
                 (_meta(module_src=src.encode()),))
    record = sp.load_plain_pickle(_plain(tmp_path, data))
    assert record.module_src_sha256 == hashlib.sha256(src.encode()).hexdigest()
    assert record.module_src_head == src


def test_an_nvlabs_record_without_state_or_modules_is_empty_not_an_error(tmp_path: Path) -> None:
    data = _call("torch_utils.persistence", "_reconstruct_persistent_obj",
                 (_meta(state=None, module_src=None),))
    record = sp.load_plain_pickle(_plain(tmp_path, data))
    assert record.state == {} and record.modules == {}
    assert record.module_src_sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("meta, words", [
    ("not a dict", "not an NVlabs class record"),
    ({"type": "function", "version": sp.PERSISTENCE_VERSION}, "not an NVlabs class record"),
    ({"type": "class", "version": sp.PERSISTENCE_VERSION - 1}, f"{sp.PERSISTENCE_VERSION - 1}"),
    ({"type": "class"}, "None"),
])
def test_a_persistent_record_of_another_kind_is_refused(tmp_path: Path, meta: object,
                                                         words: str) -> None:
    data = _call("torch_utils.persistence", "_reconstruct_persistent_obj", (meta,))
    with pytest.raises(ModelFormatError, match=words):
        sp.load_plain_pickle(_plain(tmp_path, data))


def test_easydict_reads_as_a_dict_with_its_items(tmp_path: Path) -> None:
    got = sp.load_plain_pickle(_plain(tmp_path, _call("dnnlib.util", "EasyDict", ())))
    assert isinstance(got, dict) and isinstance(got, sp.AttrDict) and got == {}


# ---- what a file that asks for anything else gets -----------------------------------------

@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("os", "system"),
                                          ("posix", "system"), ("subprocess", "Popen"),
                                          ("torch", "load"), ("numpy", "load"),
                                          ("collections", "namedtuple"), ("builtins", "dict"),
                                          ("torch._utils", "_rebuild_device_tensor_from_numpy")])
def test_any_other_global_is_refused_by_name_and_nothing_runs(tmp_path: Path, module: str,
                                                              name: str) -> None:
    path = _plain(tmp_path, _call(module, name, ("1",)))
    with pytest.raises(UnsafeFileError) as err:
        sp.load_plain_pickle(path)
    assert f"'{module}.{name}'" in str(err.value) and str(path) in str(err.value)
    assert "nothing from it was executed" in str(err.value)


def test_a_tensorflow_pickle_is_named_as_such(tmp_path: Path) -> None:
    path = _plain(tmp_path, _call("dnnlib.tflib.network", "Network", ()))
    with pytest.raises(ModelFormatError, match="TensorFlow") as err:
        sp.load_plain_pickle(path)
    assert str(path) in str(err.value) and "legacy.py" in str(err.value)


def test_every_torch_storage_name_resolves_to_its_dtype() -> None:
    unpickler = sp.RestrictedUnpickler(io.BytesIO(b""), "probe.pkl")
    for name, dtype in sp._STORAGE_DTYPES.items():
        assert unpickler.find_class("torch", name).dtype == dtype
    with pytest.raises(UnsafeFileError):
        unpickler.find_class("torch", "ComplexFloatStorage")
    with pytest.raises(UnsafeFileError):
        unpickler.find_class("numpy", "FloatStorage")


def test_a_plain_pickle_with_a_persistent_id_is_a_named_format_error(tmp_path: Path) -> None:
    data = b"\x80\x02X\x03\x00\x00\x00pidQ."  # BINPERSID on a string
    path = _plain(tmp_path, data)
    with pytest.raises(ModelFormatError, match="truncated or corrupt") as err:
        sp.load_plain_pickle(path)
    assert "persistent id" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("data", [pickle.dumps({"a": [1, 2, 3]}, protocol=2)[:-5], b"",
                                  b"\x80\x02}q\x00(X\x01\x00\x00\x00a"])
def test_a_truncated_pickle_is_a_named_format_error(tmp_path: Path, data: bytes) -> None:
    path = _plain(tmp_path, data)
    with pytest.raises(ModelFormatError, match="truncated or corrupt") as err:
        sp.load_plain_pickle(path)
    assert str(path) in str(err.value)


# ---- the nesting bound ---------------------------------------------------------------------

def _nested_lists(depth: int) -> bytes:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return pickle.dumps(value, protocol=2)


@pytest.mark.parametrize("depth", [1, 2, 30])
def test_nesting_is_counted_exactly_at_the_bound(depth: int) -> None:
    data = _nested_lists(depth)
    sp.check_pickle_structure(data, "ok.pkl", max_depth=depth)
    with pytest.raises(ModelFormatError, match=f"more than {depth - 1} levels"):
        sp.check_pickle_structure(data, "deep.pkl", max_depth=depth - 1)


def test_a_deep_object_reused_from_the_memo_keeps_its_depth() -> None:
    inner = _nested_lists(20)
    shared: list = pickle.loads(inner)
    # the deep list pickled once, then referenced again by memo GET inside a tuple
    data = pickle.dumps(([shared], (shared,)), protocol=2)
    sp.check_pickle_structure(data, "ok.pkl", max_depth=23)
    with pytest.raises(ModelFormatError):
        sp.check_pickle_structure(data, "deep.pkl", max_depth=21)


def test_a_duplicated_deep_object_keeps_its_depth() -> None:
    # protocol 0: build a 5-deep list, DUP it, put both in a list and wrap that once more
    data = b"(((((((lllll2ll."
    five = [[[[[]]]]]
    assert pickle.loads(data) == [[five, five]]
    # seven lists deep, and STOP takes the finished object as one level more
    sp.check_pickle_structure(data, "ok.pkl", max_depth=8)
    with pytest.raises(ModelFormatError):
        sp.check_pickle_structure(data, "deep.pkl", max_depth=7)


@pytest.mark.parametrize("data, words", [(b"l.", "no mark"), (b"a.", "stack underflow"),
                                         (b"p0\n.", "memo of nothing"),
                                         (b"\x80\x02\xff.", "truncated or corrupt")])
def test_a_malformed_opcode_stream_is_a_named_format_error(data: bytes, words: str) -> None:
    with pytest.raises(ModelFormatError, match=words) as err:
        sp.check_pickle_structure(data, "bad.pkl")
    assert "bad.pkl" in str(err.value)


# ---- archives ------------------------------------------------------------------------------

def _archive(tmp_path: Path, members: dict[str, bytes], name: str = "m.pt",
             compress: int = zipfile.ZIP_STORED) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compress) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def test_torch_archives_of_every_stored_dtype_read_back_exactly(tmp_path: Path) -> None:
    tensors = {"f32": torch.randn(3, 4), "f16": torch.randn(5).half(),
               "bf16": torch.randn(2, 2).bfloat16(), "i64": torch.arange(7),
               "i32": torch.arange(3, dtype=torch.int32), "u8": torch.arange(9, dtype=torch.uint8),
               "b": torch.tensor([True, False]), "f64": torch.randn(2).double(),
               "empty": torch.zeros(0)}
    base = torch.arange(12.0)
    tensors["view"] = base[3:9].view(2, 3)
    tensors["base"] = base
    path = tmp_path / "t.pt"
    torch.save(tensors, path)
    got = sp.load_torch_zip(path)
    assert set(got) == set(tensors)
    for key, value in tensors.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    got["base"][4] = -1.0  # the view and its base were one storage in the file: still one
    assert float(got["view"][0, 1]) == -1.0


def test_an_archive_without_data_pkl_or_not_a_zip_is_named(tmp_path: Path) -> None:
    no_pkl = _archive(tmp_path, {"archive/data/0": b"\0" * 8})
    with pytest.raises(ModelFormatError, match="without data.pkl"):
        sp.load_torch_zip(no_pkl)
    junk = _plain(tmp_path, b"PK\x03\x04 not really a zip", "junk.pt")
    with pytest.raises(ModelFormatError, match="truncated or corrupt") as err:
        sp.load_torch_zip(junk)
    assert "junk.pt" in str(err.value)


@pytest.mark.parametrize("order, ok", [(b"little", True), (b"little\n", True), (b"", True),
                                       (b"big", False)])
def test_only_little_endian_archives_are_read(tmp_path: Path, order: bytes, ok: bool) -> None:
    path = tmp_path / "t.pt"
    torch.save({"x": torch.ones(2)}, path)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    prefix = next(n for n in members if n.endswith("data.pkl"))[:-len("data.pkl")]
    members[prefix + "byteorder"] = order
    rebuilt = _archive(tmp_path, members, "r.pt")
    if ok:
        assert torch.equal(sp.load_torch_zip(rebuilt)["x"], torch.ones(2))
    else:
        with pytest.raises(ModelFormatError, match="big-endian"):
            sp.load_torch_zip(rebuilt)


def _with_pid(pid: tuple) -> bytes:
    return b"\x80\x02" + pickle.dumps(pid, protocol=2)[2:-1] + b"Q."


@pytest.mark.parametrize("pid, words", [
    (("storage",), "unsupported persistent id"),
    (("module", 1, 2, 3, 4), "unsupported persistent id"),
    (("storage", "FloatStorage", "0", "cpu", 2), "unsupported storage type"),
])
def test_a_storage_id_the_reader_does_not_know_is_refused(tmp_path: Path, pid: tuple,
                                                           words: str) -> None:
    path = _archive(tmp_path, {"a/data.pkl": _with_pid(pid), "a/data/0": b"\0" * 8})
    with pytest.raises(ModelFormatError, match=words):
        sp.load_torch_zip(path)


def test_a_storage_the_archive_lacks_is_a_named_format_error(tmp_path: Path) -> None:
    data = (b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x009"
            b"X\x03\x00\x00\x00cpuK\x02tQ.")
    path = _archive(tmp_path, {"a/data.pkl": data})
    with pytest.raises(ModelFormatError, match="truncated or corrupt"):
        sp.load_torch_zip(path)


def test_the_archive_pickle_is_bounded_by_its_declared_size(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(sp, "MAX_PICKLE_BYTES", 100)
    path = _archive(tmp_path, {"a/data.pkl": b"N." + b"\0" * 99})
    with zipfile.ZipFile(path) as zf, pytest.raises(ModelFormatError, match="declares 101"):
        sp.read_archive_pickle(zf, str(path))
    exact = _archive(tmp_path, {"a/data.pkl": b"N." + b"\0" * 98}, "exact.pt")
    with zipfile.ZipFile(exact) as zf:
        assert len(sp.read_archive_pickle(zf, str(exact))) == 100
    none = _archive(tmp_path, {"a/other": b"x"}, "none.pt")
    with zipfile.ZipFile(none) as zf:
        assert sp.read_archive_pickle(zf, str(none)) == b""


def test_a_compression_bomb_is_refused_before_anything_inflates(tmp_path: Path) -> None:
    bomb = _archive(tmp_path, {"a/data.pkl": b"N.", "a/data/0": b"\0" * (70 * 1024 * 1024)},
                    "bomb.pt", zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(ModelFormatError, match="compression bomb") as err:
        sp.check_torch_archive_structure(bomb)
    assert "bomb.pt" in str(err.value)
    # a small archive may be deflated: the bound is 64 MiB or 64 times the file
    small = _archive(tmp_path, {"a/data.pkl": b"N.", "a/data/0": b"\0" * (1024 * 1024)},
                     "small.pt", zipfile.ZIP_DEFLATED)
    sp.check_torch_archive_structure(small)


def test_the_archive_check_refuses_a_deep_pickle_and_passes_a_legacy_file(
        tmp_path: Path) -> None:
    depth = sp.MAX_PICKLE_DEPTH + 5  # protocol 0, written by hand: pickle itself would recurse
    deep = _archive(tmp_path, {"a/data.pkl": b"(" * depth + b"l" * depth + b"."}, "d.pt")
    with pytest.raises(ModelFormatError, match="nests"):
        sp.check_torch_archive_structure(deep)
    legacy = _plain(tmp_path, pickle.dumps({"x": 1}), "legacy.pt")
    sp.check_torch_archive_structure(legacy)  # not a zip: torch.load's own reader reports it


# ---- the scan that guides format detection --------------------------------------------------

def test_referenced_globals_names_the_modules_in_both_spellings() -> None:
    proto2 = _call("torch_utils.persistence", "_reconstruct_persistent_obj", ({},))
    assert sp.referenced_globals(proto2) == {"torch_utils.persistence"}
    proto4 = pickle.dumps(collections.OrderedDict(a=np.float32(1)), protocol=4)
    assert {"collections", "numpy"} <= sp.referenced_globals(proto4)
    assert sp.referenced_globals(pickle.dumps([1, "x"], protocol=4)) == set()


def test_referenced_globals_stops_at_its_limit_and_never_raises() -> None:
    data = pickle.dumps([1] * 50 + [collections.OrderedDict()], protocol=2)
    assert sp.referenced_globals(data) == {"collections"}
    assert sp.referenced_globals(data, limit=5) == set()
    assert sp.referenced_globals(b"\xff\xfe garbage") == set()
    assert sp.referenced_globals(_call("os", "system", ("x",))[:-8]) == {"os"}


# ---- the memo, in every protocol's spelling, and the words a user reads --------------------

def _least_depth(data: bytes) -> int:
    """The smallest bound the scan lets ``data`` through."""
    depth = 1
    while True:
        try:
            sp.check_pickle_structure(data, "probe.pkl", max_depth=depth)
            return depth
        except ModelFormatError:
            depth += 1


@pytest.mark.parametrize("protocol, padding", [(0, 0), (2, 0), (4, 0), (2, 300), (4, 300)])
def test_a_memoised_object_met_again_deeper_counts_its_own_depth(protocol: int,
                                                                 padding: int) -> None:
    """A deep tuple (the kind whose hashing crashed the process) first appears shallow,
    then again (by memo) three tuples deeper: the second use decides the depth, in PUT/GET
    (protocol 0), BINPUT/BINGET (2) and MEMOIZE (4) spellings, and the LONG_ forms once the
    memo passes 256 entries."""
    shared: tuple = ()
    for _ in range(19):
        shared = (shared, 0)
    pad = [f"s{i}" for i in range(padding)]
    reused = pickle.dumps((pad, shared, (((shared, 1), 1), 1)), protocol=protocol)
    fresh = pickle.dumps((pad, shared, ((((), 1), 1), 1)), protocol=protocol)
    ops = {op.name for op, _, _ in pickletools.genops(reused)}
    assert ops & {"GET", "BINGET", "LONG_BINGET"}
    if padding:
        assert "LONG_BINGET" in ops
    # fresh: its deepest part is the first, shallow use; reused: three levels more
    assert _least_depth(reused) == _least_depth(fresh) + 3


def test_the_words_a_user_reads_name_the_file_the_cause_and_what_to_do(tmp_path: Path) -> None:
    refused = _plain(tmp_path, _call("os", "system", ("x",)), "evil.pkl")
    with pytest.raises(UnsafeFileError) as err:
        sp.load_plain_pickle(refused)
    assert ("which is not a tensor or plain-data constructor. Loading it could run code from "
            "the file, so nothing from it was executed. If this is a genuine model, convert it "
            "with the tool that wrote it to a .safetensors or rosinality .pt file."
            ) in str(err.value)
    truncated = _plain(tmp_path, pickle.dumps({"a": 1}, protocol=2)[:-3], "cut.pkl")
    with pytest.raises(ModelFormatError) as err:
        sp.load_plain_pickle(truncated)
    assert str(err.value).startswith(f"{truncated}: the file is truncated or corrupt (")
    assert "Error" in str(err.value).split("(")[1].split(":")[0]  # the exception's type named
    assert str(err.value).endswith("). Download or copy it again.")
    deep = b"(" * 50 + b"l" * 50 + b"."
    with pytest.raises(ModelFormatError) as err:
        sp.check_pickle_structure(deep, "deep.pkl", max_depth=10)
    assert str(err.value) == ("deep.pkl: refused: the pickle nests objects more than 10 levels "
                              "deep (no model file does; such a file can crash the process)")
    record = _call("torch_utils.persistence", "_reconstruct_persistent_obj", ("x",))
    with pytest.raises(ModelFormatError) as err:
        sp.load_plain_pickle(_plain(tmp_path, record, "rec.pkl"))
    assert "persistent object record is not an NVlabs class record" in str(err.value)


def test_errors_inside_an_archive_name_the_archive(tmp_path: Path) -> None:
    cut = _archive(tmp_path, {"a/data.pkl": pickle.dumps({"a": 1}, protocol=2)[:-3]}, "cut.pt")
    with pytest.raises(ModelFormatError) as err:
        sp.load_torch_zip(cut)
    assert str(err.value).startswith(f"{cut}: the file is truncated or corrupt (")
    deep = _archive(tmp_path, {"a/data.pkl": b"(" * 1100 + b"l" * 1100 + b"."}, "deep.pt")
    for check in (sp.load_torch_zip, sp.check_torch_archive_structure):
        with pytest.raises(ModelFormatError) as err:
            check(deep)
        assert str(err.value).startswith(f"{deep}: refused: the pickle nests")
    evil = _archive(tmp_path, {"a/data.pkl": _call("os", "system", ("x",))}, "evil.pt")
    with pytest.raises(UnsafeFileError) as err:
        sp.load_torch_zip(evil)
    assert str(err.value).startswith(f"{evil}: refused to load")
    bomb = _archive(tmp_path, {"a/data.pkl": b"N.", "a/data/0": b"\0" * (70 * 1024 * 1024)},
                    "bomb.pt", zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelFormatError) as err:
        sp.check_torch_archive_structure(bomb)
    assert "(a compression bomb; torch.save archives are stored, not compressed)" in str(err.value)


def test_a_record_source_that_is_not_utf8_is_hashed_not_refused(tmp_path: Path) -> None:
    raw = b"class G:\xff\xfe pass"
    data = _call("torch_utils.persistence", "_reconstruct_persistent_obj",
                 (_meta(module_src=raw),))
    record = sp.load_plain_pickle(_plain(tmp_path, data))
    text = raw.decode("utf-8", "replace")
    assert record.module_src_head == text
    assert record.module_src_sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    lone = "class G: \ud800 pass"  # a lone surrogate: not encodable as UTF-8 as it stands
    data = _call("torch_utils.persistence", "_reconstruct_persistent_obj",
                 (_meta(module_src=lone),))
    record = sp.load_plain_pickle(_plain(tmp_path, data, "lone.pkl"))
    assert record.module_src_sha256 == hashlib.sha256(
        lone.encode("utf-8", "replace")).hexdigest()


def test_referenced_globals_reads_old_instances_and_counts_its_limit_exactly() -> None:
    assert sp.referenced_globals(b"(ios\nsystem\n.") == {"os"}  # INST, protocol 0
    data = pickle.dumps([1, 2, 3, collections.OrderedDict()], protocol=2)
    at = next(i for i, (op, _, _) in enumerate(pickletools.genops(data))
              if op.name == "GLOBAL")
    assert sp.referenced_globals(data, limit=at) == {"collections"}
    assert sp.referenced_globals(data, limit=at - 1) == set()
