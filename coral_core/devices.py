"""Device choice in one place: cuda, then mps, then cpu, unless the caller names one."""
from __future__ import annotations

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
