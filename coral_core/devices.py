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


# Generators up to this size run their CPU work on one thread in the CLI (see cli_threads_for).
SMALL_GENERATOR_PX = 128


def cli_threads_for(resolution: int, device: torch.device) -> int:
    """The CLI's thread policy: on the CPU, a small generator (the demo's 64 px) runs on one
    thread unless the user set ``OMP_NUM_THREADS``; larger ones keep torch's default. Why: on
    2 cores the demo's `coral train` took 9.2 s with torch's 2 threads and 10.0 s with one when
    the machine was quiet, but 30.7 s against 15.5 s beside two busy processes (the threads
    spin at barriers). Not applied inside ComfyUI: the host's settings are the user's.
    Returns the thread count in use."""
    import os

    if device.type == "cpu" and resolution <= SMALL_GENERATOR_PX and \
            not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(1)
    return torch.get_num_threads()
