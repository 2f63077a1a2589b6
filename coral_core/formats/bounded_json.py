"""JSON from user files, bounded before the parser sees it.

``json.loads`` recurses once per nesting level: a 100,000-deep ``[[[[...`` raises
``RecursionError`` (a raw traceback in ComfyUI) and a large document costs memory in proportion.
Every JSON text a user can hand the pack (edit metadata, safetensors headers, CLIP configs)
goes through ``parse_json``: its size and nesting depth are checked by a linear scan first, and
every failure is a ``ModelFormatError`` naming the file and the field.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError

MAX_JSON_DEPTH = 64
MAX_JSON_BYTES = 16 * 1024 * 1024


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` outside strings (no parsing, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(raw: str | bytes, source: str, what: str, max_bytes: int = MAX_JSON_BYTES,
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse ``raw`` (from ``source``, described as ``what``) within the bounds."""
    if len(raw) > max_bytes:
        raise ModelFormatError(f"{source}: {what} is {len(raw)} bytes; at most {max_bytes} "
                               "expected")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"{source}: {what} is not UTF-8 text ({exc})") from exc
    if json_depth(text) > max_depth:
        raise ModelFormatError(f"{source}: {what} nests more than {max_depth} levels deep; "
                               "no real file does")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ModelFormatError(f"{source}: {what} is not valid JSON ({exc})") from exc


def read_json_file(path: Path, what: str, max_bytes: int = 1024 * 1024) -> Any:
    """A small JSON file (a config), size-checked before it is read."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ModelFormatError(f"{path}: {what} is {size} bytes; at most {max_bytes} "
                                   "expected")
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    return parse_json(raw, str(path), what, max_bytes)
