"""Device choice in one place: cuda, then mps, then cpu, unless the caller names one."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    if requested not in (None, "", "auto"):
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def empty_device_cache(device: torch.device | None = None) -> None:
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.empty_cache()


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for one job and restore the caller's RNG state afterwards: inside a
    ComfyUI server, reseeding the global generator would change every other node's samples."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (0 where the platform cannot say: the
    ``resource`` module is Unix-only, and the pack must import on Windows)."""
    try:
        import resource
    except ImportError:
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
