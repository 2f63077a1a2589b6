"""Property-based fuzzing (hypothesis) of every parser a user file reaches before a model is
built: whatever bytes arrive, each either returns or raises the project's one boundary error
(ModelFormatError, naming the source) — never another exception type, never a crash.

The budget is small in CI; ``CORAL_FUZZ_EXAMPLES=5000 pytest tests/unit/test_fuzz_parsers.py``
runs a longer search. Seeded with the classes of the hostile-files issue (deep nesting, huge
declared sizes, wrong types, NaN, non-UTF-8)."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coral_core.errors import ModelFormatError

EXAMPLES = int(os.environ.get("CORAL_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=10), children, max_size=4), max_leaves=30)


@FUZZ
@given(st.binary(max_size=400))
@example(b"[" * 100_000)
@example(b"\xff\xfe\x00")
@example(b'{"a": ' * 70 + b"1" + b"}" * 70)
def test_bounded_json_parser(raw: bytes) -> None:
    from coral_core.formats.bounded_json import parse_json

    try:
        parse_json(raw, "fuzz.json", "a config")
    except ModelFormatError as exc:
        assert "fuzz.json" in str(exc)


@FUZZ
@given(st.binary(max_size=300))
@example(b"\x80\x04}" + b")" + b"\x85" * 5000 + b"K\x01s.")
@example(b"\x80\x02(((((((((((((((")
def test_pickle_structure_scan(data: bytes) -> None:
    from coral_core.formats.safe_pickle import check_pickle_structure

    try:
        check_pickle_structure(data, "fuzz.pkl", max_depth=100)
    except ModelFormatError as exc:
        assert "fuzz.pkl" in str(exc)


@FUZZ
@given(header=json_values, tail=st.binary(max_size=64))
@example(header={"w": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 8]}},
         tail=b"\x00" * 8)
@example(header={"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, tail=b"")
def test_safetensors_header_reader(tmp_path: Path, header: object, tail: bytes) -> None:
    from coral_core.formats.integrity import read_header

    raw = json.dumps(header).encode()
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + tail)
    try:
        read_header(path, "generator")
    except ModelFormatError as exc:
        assert str(path) in str(exc)


@FUZZ
@given(json_values)
@example({"vision_cfg": {"width": 10 ** 9}, "text_cfg": {"layers": 10 ** 6}})
@example({"vision_cfg": {"layers": [True, 3]}, "text_cfg": []})
@example({"embed_dim": float("nan")})
def test_clip_config_checks(cfg: object) -> None:
    from coral_core.formats.clip_checks import check_clip_config, min_parameters

    try:
        checked = check_clip_config(cfg, "fuzz/open_clip_config.json")
    except ModelFormatError as exc:
        assert "fuzz/open_clip_config.json" in str(exc)
        return
    assert min_parameters(checked) >= 0


@FUZZ
@given(st.dictionaries(st.sampled_from(["max_layer", "only_layers", "can_channels",
                                        "catalogue_layer", "info"]),
                       st.text(max_size=30) | json_values.map(json.dumps), max_size=5))
@example({"only_layers": "[-5, 100000]", "max_layer": "-7", "info": "[1]"})
@example({"can_channels": "[" * 500 + "]" * 500})
def test_edit_metadata_fields(meta: dict[str, str]) -> None:
    from coral_core.editing.edit import _meta_info, _meta_int, _meta_ints

    path = Path("fuzz_edit.safetensors")
    for call in (lambda: _meta_int(meta, "max_layer", path, 1, 18),
                 lambda: _meta_ints(meta, "only_layers", path, 1, 18),
                 lambda: _meta_ints(meta, "can_channels", path, 1, 8192),
                 lambda: _meta_info(meta, path)):
        try:
            value = call()
        except ModelFormatError as exc:
            assert "fuzz_edit.safetensors" in str(exc)
            continue
        if isinstance(value, int):
            assert 1 <= value <= 18
        elif isinstance(value, list):
            assert value and all(isinstance(v, int) and v >= 1 for v in value)


@pytest.mark.parametrize("dtype", ["complex64", "object"])
def test_npz_latents_of_the_wrong_kind(tmp_path: Path, dtype: str) -> None:
    import numpy as np

    from coral_core.errors import CoralError
    from coral_core.latents import load_latents

    path = tmp_path / "w.npz"
    arr = np.ones((1, 4, 8), dtype=dtype)
    np.savez(path, w=arr)
    with pytest.raises(CoralError) as err:
        load_latents(path)
    assert str(path) in str(err.value)
