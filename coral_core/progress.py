"""Progress reporting and cooperative cancellation for long work, free of any UI framework.

Long loops call ``reporter.update(step, total, **info)``; the callback (a CLI printer, ComfyUI's
ProgressBar adapter, a test) may raise ``CancelledError`` or set ``reporter.cancelled`` to stop
the loop at the next step boundary.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import CancelledError

ProgressCallback = Callable[[int, int, dict[str, Any]], None]


@dataclass
class Reporter:
    """``poll`` runs at every step boundary, even between reports: a host's own interrupt check
    (it raises the host's exception), so Cancel stops a run within one step however rarely the
    progress is drawn."""

    callback: ProgressCallback | None = None
    every: int = 1
    cancelled: bool = False
    started: float = field(default_factory=time.perf_counter)
    poll: Callable[[], None] | None = None

    def update(self, step: int, total: int, force: bool = False, **info: Any) -> None:
        self.check()
        if self.callback is not None and (force or step % self.every == 0 or step == total):
            self.callback(step, total, info)

    def check(self) -> None:
        """Raise ``CancelledError`` if a cancel was requested (call at step boundaries)."""
        if self.poll is not None:
            self.poll()
        if self.cancelled:
            raise CancelledError("cancelled")

    def cancel(self) -> None:
        self.cancelled = True

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def counted_phase(phase: str, done: int, total: int, elapsed: float) -> str:
    """A phase's progress as a user reads it: "sample bank 96/512, about 1 min 20 s left"
    (the estimate appears once some work is done: the first chunk times the rest)."""
    text = f"{phase} {done}/{total}"
    if 0 < done < total:
        left = round(elapsed / done * (total - done))
        text += f", about {left // 60} min {left % 60} s left" if left >= 60 else \
            f", about {left} s left"
    return text


def print_progress(prefix: str) -> ProgressCallback:
    """A callback that prints one line per report: step, elapsed and scalar info."""
    t0 = time.perf_counter()

    def report(step: int, total: int, info: dict[str, Any]) -> None:
        scalars = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in info.items() if isinstance(v, (int, float, str)))
        print(f"{prefix} {step}/{total} {time.perf_counter() - t0:6.1f}s {scalars}",
              file=sys.stderr, flush=True)

    return report
