"""Error types the engine raises.

One base class so the CLI and the ComfyUI nodes can tell a user's mistake (a bad file, a bad
input) from a bug, and show the message as it is: every message names the file or input and says
what was expected.
"""
from __future__ import annotations


class CoralError(Exception):
    """A problem the user can fix: the message says what and how."""


class ModelFormatError(CoralError):
    """A model file that is unreadable, corrupt, or of a kind this engine does not support."""


class UnsafeFileError(ModelFormatError):
    """A file that asks to run code or to import something outside the allowlist while loading."""


class InputError(CoralError):
    """A bad argument: wrong shape, empty prompt, out-of-range value."""


class EditMismatchError(CoralError):
    """An edit file used with a generator it was not trained for."""


class CancelledError(CoralError):
    """Long work stopped because the caller asked it to."""
