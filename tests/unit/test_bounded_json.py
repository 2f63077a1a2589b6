"""JSON from user files: the bounds a file meets before the parser sees it, exactly at their
edges, and the words each refusal says (the file, what it was, what was expected)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coral_core.errors import ModelFormatError
from coral_core.formats.bounded_json import json_depth, parse_json, read_json_file

# JSON values with their true nesting depth
_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))


def _nest(children):
    return st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4),
                                                                     children, max_size=3))


def true_depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((true_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((true_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(st.recursive(_leaves, _nest, max_leaves=20))
def test_depth_is_the_true_nesting_whatever_the_strings_hold(value) -> None:
    """Brackets, quotes and backslashes inside strings do not count."""
    assert json_depth(json.dumps(value)) == true_depth(value)


@pytest.mark.parametrize("text, depth", [
    ("", 0), ("1", 0), ("[]", 1), ("[[]]", 2), ('{"a": [1, {"b": []}]}', 4),
    ('"[[["', 0), ('["\\"[[["]', 1), ('["\\\\", [[]]]', 3), ('["a\\\\"]', 1),
    ("[][][]", 1), ("[[]][[[]]]", 3)])
def test_depth_of_hand_examples(text, depth) -> None:
    assert json_depth(text) == depth


def test_size_and_depth_bounds_are_inclusive_and_named() -> None:
    assert parse_json("[1]", "f.json", "a config", max_bytes=3) == [1]
    with pytest.raises(ModelFormatError) as err:
        parse_json("[10]", "f.json", "a config", max_bytes=3)
    assert str(err.value) == "f.json: a config is 4 bytes; at most 3 expected"
    assert parse_json("[[1]]", "f.json", "metadata", max_depth=2) == [[1]]
    with pytest.raises(ModelFormatError) as err:
        parse_json("[[[1]]]", "f.json", "metadata", max_depth=2)
    assert str(err.value) == ("f.json: metadata nests more than 2 levels deep; no real file "
                              "does")


def test_bytes_are_utf8_and_other_bytes_are_refused_by_name() -> None:
    assert parse_json('{"n": "é"}'.encode(), "f", "a header") == {"n": "é"}
    with pytest.raises(ModelFormatError, match=r"^f: a header is not UTF-8 text"):
        parse_json(b'{"n": "\xff"}', "f", "a header")
    with pytest.raises(ModelFormatError, match=r"^f: a header is not valid JSON"):
        parse_json("{nope", "f", "a header")


def test_a_json_file_is_read_within_its_own_bound(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"width": 512}')
    assert read_json_file(path, "the CLIP config", max_bytes=14) == {"width": 512}
    with pytest.raises(ModelFormatError) as err:
        read_json_file(path, "the CLIP config", max_bytes=13)
    assert str(err.value) == f"{path}: the CLIP config is 14 bytes; at most 13 expected"
    with pytest.raises(ModelFormatError) as err:
        read_json_file(tmp_path / "missing.json", "the CLIP config")
    assert str(err.value) == (f"{tmp_path / 'missing.json'}: cannot read the CLIP config "
                              "(No such file or directory)")
    path.write_text("[" * 70 + "]" * 70)
    with pytest.raises(ModelFormatError, match=f"^{path}: the CLIP config nests more than 64"):
        read_json_file(path, "the CLIP config")
