"""Reading pickles (plain, and inside torch.save zip archives) without running code from them.

NVlabs network pickles store the *source code* of their classes and normally ``exec`` it while
loading; PTI saves generators the same way inside a ``torch.save`` archive. Here every global a
file asks for is checked against a short allowlist of tensor and plain-data constructors, and
NVlabs persistent objects become inert ``PersistentRecord``s. Their source text is hashed, never
executed. Anything else a file asks for (``os.system``, ``builtins.eval``, an import) stops the
load with ``UnsafeFileError`` before it runs.
"""
from __future__ import annotations

import codecs
import collections
import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ModelFormatError, UnsafeFileError

PERSISTENCE_VERSION = 6


class AttrDict(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""


@dataclass
class PersistentRecord:
    """An NVlabs persistent object, reduced to data: class name, ``__dict__`` and source hash."""

    class_name: str
    state: dict[str, Any]
    module_src_sha256: str
    module_src_head: str = field(repr=False, default="")

    @property
    def modules(self) -> dict[str, Any]:
        return self.state.get("_modules") or {}

    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise ModelFormatError("persistent object record is not an NVlabs class record")
    if meta.get("version") != PERSISTENCE_VERSION:
        raise ModelFormatError(
            f"NVlabs persistence version {meta.get('version')!r} is not supported "
            f"(expected {PERSISTENCE_VERSION})")
    src = meta.get("module_src") or ""
    if isinstance(src, bytes):
        src = src.decode("utf-8", "replace")
    return PersistentRecord(
        class_name=str(meta.get("class_name")),
        state=dict(meta.get("state") or {}),
        module_src_sha256=hashlib.sha256(src.encode("utf-8", "replace")).hexdigest(),
        module_src_head=src[:4000],
    )


def _load_storage_from_bytes(data: bytes) -> Any:
    # The inner bytes are a legacy torch.save of one storage; weights_only keeps that safe too.
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles store bytes as ``_codecs.encode(text, 'latin1')``; nothing else allowed.
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise UnsafeFileError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


class _StorageType:
    """What a zip archive's ``torch.FloatStorage`` etc. resolve to: only the dtype matters."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def _numpy_global(module: str, name: str) -> Any:
    core = getattr(np, "_core", None) or np.core
    table: dict[str, Any] = {
        "dtype": np.dtype, "ndarray": np.ndarray,
        "scalar": core.multiarray.scalar, "_reconstruct": core.multiarray._reconstruct,
    }
    return table[name]


_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"):
        lambda: _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): lambda: AttrDict,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): lambda: torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): lambda: torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"):
        lambda: torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): lambda: _load_storage_from_bytes,
    ("numpy", "dtype"): lambda: _numpy_global("numpy", "dtype"),
    ("numpy", "ndarray"): lambda: _numpy_global("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_global("", "scalar"),
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_global("", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_global("", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_global("", "_reconstruct"),
    ("builtins", "set"): lambda: set,
    ("__builtin__", "set"): lambda: set,
    ("builtins", "frozenset"): lambda: frozenset,
    ("__builtin__", "frozenset"): lambda: frozenset,  # protocol 2 spells builtins so
    ("_codecs", "encode"): lambda: _latin1_encode,
}

#: Globals that identify a recognisable but unsupported kind of file.
_KNOWN_UNSUPPORTED = {
    ("dnnlib.tflib.network", "Network"):
        "a TensorFlow StyleGAN/StyleGAN2 pickle (dnnlib.tflib). Convert it once with NVlabs "
        "stylegan2-ada-pytorch's legacy.py to a PyTorch .pkl, then load that",
}


MAX_PICKLE_DEPTH = 1000
_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE")


def check_pickle_structure(data: bytes, source: str, max_depth: int = MAX_PICKLE_DEPTH) -> None:
    """Refuse a pickle whose objects nest deeper than ``max_depth`` before unpickling it.

    Python's C unpickler builds nested tuples without recursion, but hashing or freeing a
    200,000-deep tuple recurses in C and kills the process (a segmentation fault takes the whole
    ComfyUI server with it). This walks the opcodes iteratively (``pickletools.genops``, nothing
    is built) and tracks how deep each stack entry is: a container built from entries of depth
    d has depth d + 1. Real model files nest a few dozen levels. An object fetched from the
    memo keeps the depth it had when remembered: exact for tuples (remembered finished; their
    hashing is what recurses), a floor for lists and dicts (remembered empty, filled later),
    whose freeing and comparing Python guards itself.
    """
    import pickletools

    stack: list[int] = []
    marks: list[int] = []
    memo: dict[Any, int] = {}
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in _MEMO_PUTS:  # the top is remembered as it stands, not rebuilt
                if not stack:
                    raise ModelFormatError(f"{source}: malformed pickle (memo of nothing)")
                memo[len(memo) if op.name == "MEMOIZE" else arg] = stack[-1]
                continue
            before, after = op.stack_before, op.stack_after
            deepest = 0
            if pickletools.markobject in before:
                if not marks:
                    raise ModelFormatError(f"{source}: malformed pickle (no mark)")
                start = marks.pop()
                deepest = max(stack[start:], default=0)
                del stack[start:]
                n_plain = before.index(pickletools.markobject)
            else:
                n_plain = len(before)
            if n_plain:
                if len(stack) < n_plain:
                    raise ModelFormatError(f"{source}: malformed pickle (stack underflow)")
                deepest = max([deepest] + stack[-n_plain:])
                del stack[-n_plain:]
            if op.name == "MARK":
                marks.append(len(stack))
                continue
            if op.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, 0))
                continue
            if op.name == "DUP":
                stack.extend([deepest, deepest])
                continue
            depth = deepest + 1 if n_plain or pickletools.markobject in before else 0
            if depth > max_depth:
                raise ModelFormatError(
                    f"{source}: refused: the pickle nests objects more than {max_depth} levels "
                    "deep (no model file does; such a file can crash the process)")
            stack.extend([depth] * len(after))
    except ModelFormatError:
        raise
    except Exception as exc:  # genops' own complaints: truncated or garbled opcodes
        raise _format_error(source, exc) from exc


MAX_PICKLE_BYTES = 256 * 1024 * 1024  # a model's data.pkl is kilobytes to a few megabytes


def read_archive_pickle(zf: zipfile.ZipFile, source: str) -> bytes:
    """The archive's ``data.pkl``, refused if it declares or inflates past MAX_PICKLE_BYTES
    (a 1 MB zip can inflate to gigabytes); b"" if there is none."""
    names = [n for n in zf.namelist() if n.endswith("data.pkl")]
    if not names:
        return b""
    info = zf.getinfo(names[0])
    if info.file_size > MAX_PICKLE_BYTES:
        raise ModelFormatError(f"{source}: the archive's data.pkl declares {info.file_size} "
                               f"bytes; at most {MAX_PICKLE_BYTES} expected of a model file")
    with zf.open(info) as f:
        data = f.read(MAX_PICKLE_BYTES + 1)
    if len(data) > MAX_PICKLE_BYTES:
        raise ModelFormatError(f"{source}: the archive's data.pkl inflates past "
                               f"{MAX_PICKLE_BYTES} bytes: refused")
    return data


def check_torch_archive_structure(path: Path) -> None:
    """``check_pickle_structure`` on a ``torch.save`` zip archive's ``data.pkl``: run before
    ``torch.load(weights_only=True)``, whose unpickler crashes on the same deep nesting; the
    archive's members are also bounded by their declared and inflated sizes."""
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(i.file_size for i in zf.infolist())
            held = path.stat().st_size
            if total > max(64 * held, 64 * 1024 * 1024):
                raise ModelFormatError(
                    f"{path}: the archive declares {total} bytes inside a {held}-byte file "
                    "(a compression bomb; torch.save archives are stored, not compressed)")
            data = read_archive_pickle(zf, str(path))
            if data:
                check_pickle_structure(data, str(path))
    except zipfile.BadZipFile:
        return  # not a zip archive (legacy torch file): torch.load reports it


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only returns allowlisted, data-only callables."""

    def __init__(self, file: Any, source: str, persistent_loader: Callable[[Any], Any] | None
                 = None) -> None:
        super().__init__(file)
        self._source = source
        self._persistent_loader = persistent_loader

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]()
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if key in _KNOWN_UNSUPPORTED:
            raise ModelFormatError(f"{self._source}: this is {_KNOWN_UNSUPPORTED[key]}.")
        raise UnsafeFileError(
            f"{self._source}: refused to load: the file asks for '{module}.{name}', which is "
            "not a tensor or plain-data constructor. Loading it could run code from the file, "
            "so nothing from it was executed. If this is a genuine model, convert it with the "
            "tool that wrote it to a .safetensors or rosinality .pt file.")

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_loader is None:
            raise pickle.UnpicklingError(f"{self._source}: unexpected persistent id in pickle")
        return self._persistent_loader(pid)


def _format_error(source: str, exc: BaseException) -> ModelFormatError:
    return ModelFormatError(
        f"{source}: the file is truncated or corrupt ({type(exc).__name__}: {exc}). "
        "Download or copy it again.")


def load_plain_pickle(path: Path) -> Any:
    """Unpickle a plain pickle file (an NVlabs network pickle) under the allowlist."""
    data = path.read_bytes()
    check_pickle_structure(data, str(path))
    with io.BytesIO(data) as f:
        try:
            return RestrictedUnpickler(f, str(path)).load()
        except (ModelFormatError, UnsafeFileError):
            raise
        except (EOFError, pickle.UnpicklingError, ValueError, RuntimeError, TypeError,
                AttributeError, IndexError, KeyError, MemoryError, OverflowError) as exc:
            raise _format_error(str(path), exc) from exc


def _zip_record_prefix(zf: zipfile.ZipFile, path: Path) -> str:
    pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
    if not pkl:
        raise ModelFormatError(f"{path}: zip archive without data.pkl: not a torch.save file")
    return pkl[0][: -len("data.pkl")]


class StorageReader:
    """Resolves a torch zip archive's persistent storage ids to tensors' storages, each read
    once from ``<prefix>data/<key>``; refuses ids it does not understand."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str, source: str) -> None:
        self.zf, self.prefix, self.source = zf, prefix, source
        self.storages: dict[str, Any] = {}

    def load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.200}")
        _, storage_type, key, _location, _numel = pid[:5]
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else None
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r:.200}")
        key = str(key)
        if key not in self.storages:
            raw = bytearray(self.zf.read(f"{self.prefix}data/{key}"))
            untyped = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage() \
                if raw else torch.UntypedStorage(0)
            self.storages[key] = torch.storage.TypedStorage(
                wrap_storage=untyped, dtype=dtype, _internal=True)
        return self.storages[key]


def load_torch_zip(path: Path,
                   unpickler: type[RestrictedUnpickler] | None = None) -> Any:
    """Read a ``torch.save`` (or TorchScript) zip archive's ``data.pkl`` as data.

    torch's own ``weights_only`` loader refuses NVlabs persistent records, and its unrestricted
    loader (like ``torch.jit.load``) would execute what the file asks for; this reads the
    archive's storages directly and unpickles ``data.pkl`` under the allowlist, with
    ``unpickler`` (a ``RestrictedUnpickler`` subclass) when a format needs extra inert types.
    """
    unpickler = unpickler or RestrictedUnpickler
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _format_error(str(path), exc) from exc
    with zf:
        prefix = _zip_record_prefix(zf, path)
        order = prefix + "byteorder"
        if order in zf.namelist() and zf.read(order).strip() not in (b"little", b""):
            raise ModelFormatError(f"{path}: big-endian torch archives are not supported")
        reader = StorageReader(zf, prefix, str(path))
        try:
            data = zf.read(prefix + "data.pkl")
            check_pickle_structure(data, str(path))
            return unpickler(io.BytesIO(data), str(path), reader.load).load()
        except (ModelFormatError, UnsafeFileError):
            raise
        except (EOFError, pickle.UnpicklingError, ValueError, RuntimeError, TypeError,
                AttributeError, IndexError, KeyError, zipfile.BadZipFile, OSError,
                RecursionError, MemoryError) as exc:
            raise _format_error(str(path), exc) from exc


def referenced_globals(data: bytes, limit: int = 1_000_000) -> set[str]:
    """Module names a pickle references, read from its opcodes without executing anything."""
    import pickletools

    found: set[str] = set()
    strings: list[str] = []
    try:
        for i, (op, arg, _pos) in enumerate(pickletools.genops(data)):
            if i > limit:
                break
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.add(arg.split(" ")[0])
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and isinstance(arg, str):
                strings.append(arg)
                strings[:] = strings[-2:]
            elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                found.add(strings[0])
    except Exception:  # noqa: BLE001,S110 - a scan only guides detection; the load reports corruption
        pass
    return found
