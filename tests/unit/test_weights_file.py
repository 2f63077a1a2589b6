"""Plain weight files (IR-SE50, e4e, checkpoints) as a user hands them over: safetensors
or torch files read back exactly, anything else a one-line error naming the file and what
was expected, and training checkpoints' wrapping taken off."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from coral_core.errors import ModelFormatError, UnsafeFileError
from coral_core.formats.weights import load_weights_file, unwrap_state_dict


def _state() -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.randn(4, 3, 3, 3), "bn.running_mean": torch.zeros(4),
            "steps": torch.tensor(7)}


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_and_torch_files_read_back_exactly(tmp_path: Path) -> None:
    state = _state()
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    assert _same(load_weights_file(tmp_path / "w.safetensors", "IR-SE50 weights"), state)
    assert _same(load_weights_file(str(tmp_path / "w.pth"), "IR-SE50 weights"), state)


def test_a_safetensors_header_that_lies_is_refused_before_safetensors_reads_it(
        tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_state(), str(path))
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    raw[:8] = struct.pack("<Q", n + 10_000)  # claims more header than the file holds
    raw[8:9] = b"{"
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFormatError) as err:
        load_weights_file(path, "e4e checkpoint")
    assert str(path) in str(err.value) and "e4e checkpoint" in str(err.value)
    # the project's own header check said so, not safetensors' or torch's reader
    assert f"the safetensors header claims {n + 10_000} bytes" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"hello, not weights", b"PK\x03\x04broken zip"])
def test_a_file_that_is_not_weights_names_the_file_and_the_kind(tmp_path: Path,
                                                                content: bytes) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError) as err:
        load_weights_file(path, "IR-SE50 weights")
    assert str(err.value).startswith(f"{path}: ")
    assert "IR-SE50 weights" in str(err.value) or "truncated or corrupt" in str(err.value)


def test_a_torch_file_that_asks_for_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # what a hostile file asks the loader to call
            return (Path.touch, (tmp_path / "ran",))

    path = tmp_path / "w.pth"
    torch.save({"x": Payload()}, path)
    with pytest.raises((ModelFormatError, UnsafeFileError)) as err:
        load_weights_file(path, "IR-SE50 weights")
    assert str(path) in str(err.value)
    assert not (tmp_path / "ran").exists()


def test_a_missing_file_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError) as err:
        load_weights_file(tmp_path / "none.safetensors", "face judge")
    assert "none.safetensors" in str(err.value)


def test_checkpoint_wrapping_is_taken_off_and_nothing_else_changes() -> None:
    w = torch.ones(2)
    assert unwrap_state_dict({"state_dict": {"module.a": w, "b": w}, "epoch": 3}) == \
        {"a": w, "b": w}
    assert unwrap_state_dict({"module.module.a": w}) == {"module.a": w}  # one prefix, once
    assert unwrap_state_dict({"a.module.b": w}) == {"a.module.b": w}  # only a prefix
    assert unwrap_state_dict({"state_dict": "not a dict", "x": w}) == \
        {"state_dict": "not a dict", "x": w}
    assert unwrap_state_dict({1: w}) == {"1": w}
    assert unwrap_state_dict([w]) == [w]
