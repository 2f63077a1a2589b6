"""The project's own safetensors files at the edges of what the reader accepts: bounds met
exactly, empty tensors, headers that claim one byte too many, data one byte short or long, and
the exact words of each refusal (the file, what was wrong, what to do)."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from coral_core.errors import ModelFormatError
from coral_core.formats import integrity
from coral_core.formats.integrity import (HASH_KEY, read_header, read_safetensors,
                                          tensor_digest, write_safetensors)


def raw_file(path, header: dict, data: bytes = b"", claim: int | None = None):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if claim is None else claim) + text + data)
    return path


def entry(shape, start, end, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def test_a_file_exactly_at_the_size_bound_is_read_and_one_byte_more_is_refused(
        tmp_path, monkeypatch) -> None:
    path = raw_file(tmp_path / "a.safetensors", {"t": entry([1], 0, 4)}, b"\0" * 4)
    size = path.stat().st_size
    monkeypatch.setattr(integrity, "MAX_FILE_BYTES", size)
    assert set(read_header(path, "generator")) == {"t"}
    monkeypatch.setattr(integrity, "MAX_FILE_BYTES", size - 1)
    with pytest.raises(ModelFormatError) as err:
        read_header(path, "generator")
    assert str(err.value) == (f"{path}: {size} bytes is larger than any generator "
                              f"({size - 1} bytes at most)")


def test_a_header_claiming_more_than_the_file_holds_is_refused_by_name(tmp_path) -> None:
    header = {"t": entry([0], 0, 0)}
    n = len(json.dumps(header).encode())
    exact = raw_file(tmp_path / "exact.safetensors", header)  # header fills the file
    assert set(read_header(exact, "edit")) == {"t"}
    for claim in (n + 1, 2 ** 64 - 1):  # one byte too many; a length past any int64
        path = raw_file(tmp_path / f"claim{claim}.safetensors", header, claim=claim)
        with pytest.raises(ModelFormatError) as err:
            read_header(path, "edit")
        assert str(err.value) == (f"{path}: the safetensors header claims {claim} bytes but "
                                  f"the file holds {n}: truncated or not an edit")
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ModelFormatError) as err:
        read_header(short, "edit")
    assert str(err.value) == f"{short}: the file is truncated (no safetensors header)"


def test_empty_tensors_and_zero_sized_dimensions_are_real_tensors(tmp_path) -> None:
    path = raw_file(tmp_path / "e.safetensors", {"a": entry([0, 3], 0, 0),
                                                 "b": entry([2], 0, 8)}, b"\0" * 8)
    assert set(read_header(path, "edit")) == {"a", "b"}


@pytest.mark.parametrize("bad, words", [
    (entry([-1], 0, 0), "has a malformed header entry (dimension -1)"),
    (entry([1.5], 0, 6), "has a malformed header entry (dimension 1.5)"),
    (entry([1], 4, 0), "has invalid offsets"),
    (entry([1], -4, 0), "has invalid offsets"),
    (entry([1], 0, "4"), "has invalid offsets"),
    (entry([2], 0, 4), "declares shape [2] (8 bytes) but spans 4 bytes: corrupt or crafted file"),
])
def test_each_malformed_entry_is_refused_with_its_words(tmp_path, bad, words) -> None:
    path = raw_file(tmp_path / "m.safetensors", {"t": bad}, b"\0" * 4)
    with pytest.raises(ModelFormatError) as err:
        read_header(path, "edit")
    assert str(err.value) == f"{path}: tensor 't' {words}"


@pytest.mark.parametrize("data, words", [
    (b"\0" * 7, "the header describes 8 bytes of tensor data but the file holds 7: truncated; "
                "copy the file again"),
    (b"\0" * 9, "the header describes 8 bytes of tensor data but the file holds 9: extra data "
                "appended; copy the file again"),
])
def test_data_one_byte_short_or_long_is_refused_with_what_to_do(tmp_path, data, words) -> None:
    path = raw_file(tmp_path / "d.safetensors", {"a": entry([1], 0, 4), "b": entry([1], 4, 8)},
                    data)
    with pytest.raises(ModelFormatError) as err:
        read_header(path, "edit")
    assert str(err.value) == f"{path}: {words}"


def test_a_gap_between_tensors_is_named_with_its_byte(tmp_path) -> None:
    path = raw_file(tmp_path / "g.safetensors", {"a": entry([1], 0, 4), "b": entry([1], 5, 9)},
                    b"\0" * 9)
    with pytest.raises(ModelFormatError) as err:
        read_header(path, "edit")
    assert str(err.value) == f"{path}: tensor data has a gap or overlap at byte 5"


def test_a_file_without_a_hash_is_refused_unless_allowed_and_a_bad_hash_always(tmp_path
                                                                             ) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"t": torch.ones(2)}, str(plain), metadata={"k": "v"})
    with pytest.raises(ModelFormatError) as err:
        read_safetensors(plain, "edit")  # the default requires the hash
    assert str(err.value) == (f"{plain}: this edit has no content hash; it was not written by "
                              "CoralStyleCLIP (or by a version before 0.2)")
    meta, tensors = read_safetensors(plain, "edit", require_hash=False)
    assert meta == {"k": "v"} and torch.equal(tensors["t"], torch.ones(2))
    forged = tmp_path / "forged.safetensors"
    save_file({"t": torch.ones(2)}, str(forged), metadata={HASH_KEY: "0" * 64})
    with pytest.raises(ModelFormatError) as err:
        read_safetensors(forged, "edit", require_hash=False)
    assert str(err.value) == (f"{forged}: the edit's content does not match its hash: the file "
                              "is corrupt (a damaged copy or download); copy it again")
    with pytest.raises(ModelFormatError) as err:
        read_safetensors(tmp_path / "none.safetensors", "generator")
    assert str(err.value) == f"{tmp_path / 'none.safetensors'}: no such generator file"


def test_the_content_hash_is_stable_across_versions() -> None:
    """Files written by earlier versions must keep verifying: the digest of a fixed content
    (an empty tensor among them) is a fixed value."""
    tensors = {"b": torch.zeros(0), "a": torch.arange(3, dtype=torch.float32)}
    assert tensor_digest(tensors, {"m": "1", HASH_KEY: "ignored"}) == (
        "a6fae78fd867863ca2298c1f2762e5cb3ce3c5f21e779adad76d17bb39d74cc8")


def test_written_files_round_trip_from_any_device_layout(tmp_path) -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # not contiguous
    path = write_safetensors(tmp_path / "w.safetensors", {"t": t}, {"k": "v"})
    meta, tensors = read_safetensors(path, "edit")
    assert torch.equal(tensors["t"], t) and meta["k"] == "v" and HASH_KEY in meta


def test_a_header_that_is_not_json_or_nests_too_deep_is_named(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(ModelFormatError, match=f"^{bad}: the safetensors header is not valid JSON"):
        read_header(bad, "edit")
    deep = tmp_path / "deep.safetensors"
    text = b'{"__metadata__": ' + b"[" * 8 + b"]" * 8 + b"}"  # 9 levels: more than any real one
    deep.write_bytes(struct.pack("<Q", len(text)) + text)
    with pytest.raises(ModelFormatError) as err:
        read_header(deep, "edit")
    assert str(err.value) == (f"{deep}: the safetensors header nests more than 8 levels deep; "
                              "no real file does")


def test_a_span_that_disagrees_with_its_shape_says_both_sizes(tmp_path) -> None:
    path = raw_file(tmp_path / "s.safetensors", {"a": entry([1], 0, 4), "b": entry([1], 4, 12)},
                    b"\0" * 12)
    with pytest.raises(ModelFormatError) as err:
        read_header(path, "edit")
    assert str(err.value) == (f"{path}: tensor 'b' declares shape [1] (4 bytes) but spans 8 "
                              "bytes: corrupt or crafted file")


def test_reading_a_file_names_what_it_was_meant_to_be(tmp_path) -> None:
    path = raw_file(tmp_path / "c.safetensors", {"t": entry([0], 0, 0)}, claim=10 ** 6)
    with pytest.raises(ModelFormatError, match="truncated or not a generator$"):
        read_safetensors(path, "generator")
