"""Region selectors: how each layer's mask is made.

Segment Selection (SS): m_l = sum_k sigmoid(e_lk) * S_k^(l), a learnable logit per (layer,
segment); cheap and readable. Convolutional Attention Network (CAN): one small head per conv layer
reading that layer's original (detached) features; trained per prompt, it predicts masks for any
image in one forward pass.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..stylegan import Generator
from .catalogue import resize_segments


class SegmentSelector(nn.Module):
    """Logits e [P, L, K] (P = 1 per prompt, or one row per image); init 0 (masks at 0.5)."""

    def __init__(self, num_layers: int, k: int, rows: int = 1, init: float = 0.5) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.full((rows, num_layers, k), _logit(init)))
        # [P, L, K]: 1 where a (layer, segment) may be used (None: all); set by region pruning
        self.gate: torch.Tensor | None = None
        # How segments shrink to coarse layers: "area" (the paper's soft downsampling) or "max"
        # (a cell belongs wholly to every segment it touches; with the final composite the
        # spill into neighbours is cut at full resolution, and the region's edge is edited as
        # fully as its interior instead of fading into a ring of the old colour)
        self.pool = "area"

    def masks(self, G: Generator, segments: torch.Tensor) -> list[torch.Tensor]:
        weights = torch.sigmoid(self.logits)  # [P, L, K]
        if self.gate is not None:
            weights = weights * self.gate
        out = []
        for info in G.conv_layers:
            seg = resize_segments(segments, info.resolution, self.pool)  # [B, K, r, r]
            m = torch.einsum("pk,bkhw->bhw", weights[:, info.index - 1], seg)[:, None] \
                if weights.shape[0] == 1 else \
                torch.einsum("bk,bkhw->bhw", weights[:, info.index - 1], seg)[:, None]
            out.append(m if self.pool == "area" else m.clamp(max=1))
        return out

    def region(self, segments: torch.Tensor, resolution: int,
               layers: list[int] | None = None, image: torch.Tensor | None = None
               ) -> torch.Tensor:
        """[B, 1, r, r]: the union of the selected segments at image resolution, each segment
        weighted by its largest weight over ``layers`` (1-based; None: all). With the original
        ``image`` the segments' edges are first snapped to its colours (``snap_segments``).
        The final composite keeps the original pixels outside it (see ``composite``)."""
        weights = torch.sigmoid(self.logits)
        if self.gate is not None:
            weights = weights * self.gate
        if layers is not None:
            keep = torch.zeros(weights.shape[1], dtype=torch.bool, device=weights.device)
            keep[[i - 1 for i in layers if 1 <= i <= weights.shape[1]]] = True
            weights = weights * keep[None, :, None]
        w = weights.amax(1)  # [P, K]
        seg = resize_segments(segments, resolution)
        if image is not None:
            seg = snap_segments(seg, image)
        eq = "pk,bkhw->bhw" if w.shape[0] == 1 else "bk,bkhw->bhw"
        return torch.einsum(eq, w, seg)[:, None].clamp(0, 1)

    def active(self, threshold: float = 0.5) -> torch.Tensor:
        """[P, L, K]: the (layer, segment) weights above ``threshold``."""
        weights = torch.sigmoid(self.logits.detach())
        if self.gate is not None:
            weights = weights * self.gate
        return weights > threshold

    def bake_gate(self) -> None:
        """Write the gate into the logits, so a saved edit needs no extra tensor and applies
        exactly as it trained: a removed weight becomes exactly 0 (sigmoid(-200) underflows),
        so a layer left with no segment is skipped by the blend, bit for bit."""
        if self.gate is not None:
            with torch.no_grad():
                self.logits.copy_(torch.where(self.gate > 0, self.logits,
                                              torch.full_like(self.logits, -200.0)))
            self.gate = None

    def selection(self, threshold: float = 0.5) -> list[tuple[int, int]]:
        """(layer, segment) pairs whose weight exceeds ``threshold`` in the first row."""
        return [(int(i) + 1, int(k)) for i, k in self.active(threshold)[0].nonzero().tolist()]


SNAP_PIXELS = 2      # how far (px at image resolution) an edge may move to meet a colour edge
SNAP_TEMPERATURE = 0.01  # squared RGB distance ([0, 1] scale) over which the choice softens


@torch.no_grad()
def snap_segments(segments: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Segments [B, K, H, W] (upsampled from the catalogue's coarser grid, so their edges are
    blocky and can sit a pixel or two off the picture's edges) re-assigned near their edges by
    colour: each pixel goes to the segment, among those within SNAP_PIXELS, whose mean colour
    in ``image`` [B, 3, H, W] is nearest (softly, so anti-aliased pixels are shared). Pixels
    with one segment around them keep it. Why: the final composite follows these edges, and a
    blocky edge left a rim of the old colour round objects or cut into them."""
    x = (image.detach().float() + 1) / 2
    seg = segments.float()
    area = seg.sum((2, 3)).clamp_min(1e-6)  # [B, K]
    mean = torch.einsum("bkhw,bchw->bkc", seg, x) / area[..., None]  # [B, K, 3]
    near = torch.nn.functional.max_pool2d(seg, 2 * SNAP_PIXELS + 1, stride=1,
                                          padding=SNAP_PIXELS) > 0
    dist = (x[:, None] - mean[..., None, None]).square().sum(2)  # [B, K, H, W]
    logits = (-dist / SNAP_TEMPERATURE).masked_fill(~near, float("-inf"))
    # pixels no segment reaches (supplied segments need not cover the picture) stay as given
    covered = near.any(1, keepdim=True)
    return torch.where(covered, torch.softmax(logits.masked_fill(~covered, 0.0), dim=1), seg)


def composite(edited: torch.Tensor, original: torch.Tensor, region: torch.Tensor
              ) -> torch.Tensor:
    """The final composite: the edited image inside ``region`` [B, 1, H, W], the original
    pixels outside. Why (a departure from the paper, ``TrainConfig.composite``): coarse layers'
    masks are a few pixels wide, so the blended image also changes near the selected region
    (a user sees other objects tinted and reshaped); the composite confines every change to the
    selected segments at full resolution. Both invariants hold: region 0 gives G(w), 1 gives
    the blend."""
    return region * edited + (1 - region) * original


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-4), 1 - 1e-4)
    return float(torch.logit(torch.tensor(p)))


class AttentionHead(nn.Module):
    def __init__(self, channels: int, hidden: int = 32, init: float = 0.5) -> None:
        super().__init__()
        last = nn.Conv2d(hidden, 1, 1)
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), last, nn.Sigmoid())
        assert last.bias is not None
        nn.init.constant_(last.bias, _logit(init))  # masks start near ``init``

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class AttentionSelector(nn.Module):
    """CAN: one head per conv layer, input the original pass's feature map (detached)."""

    def __init__(self, channels: list[int], hidden: int = 32, init: float = 0.5) -> None:
        super().__init__()
        self.channels = list(channels)
        self.heads = nn.ModuleList(AttentionHead(c, hidden, init) for c in channels)
        # [1, K]: region pruning's decision over the catalogue's clusters (None: no gate);
        # the masks are then limited to the kept clusters
        self.cluster_gate: torch.Tensor | None = None

    @classmethod
    def for_generator(cls, G: Generator, hidden: int = 32, init: float = 0.5
                      ) -> "AttentionSelector":
        return cls([c.out_channels for c in G.conv_layers], hidden, init)

    def masks(self, features: list[torch.Tensor], segments: torch.Tensor | None = None
              ) -> list[torch.Tensor | None]:
        """One mask per layer; None for layers whose features were not computed. With a
        cluster gate, ``segments`` [B, K, r, r] (the catalogue's clusters) limit each mask to
        the kept clusters."""
        out: list[torch.Tensor | None] = [head(f.detach()) for head, f in
                                          zip(self.heads, features)]
        if self.cluster_gate is not None:
            if segments is None:
                raise ValueError("this attention selector is limited to some clusters: give "
                                 "the catalogue's segments")
            region = torch.einsum("pk,bkhw->bhw", self.cluster_gate.to(segments), segments)
            out = [m * resize_segments(region[:, None], m.shape[-1]) if m is not None else None
                   for m in out]
        return out + [None] * (len(self.heads) - len(out))
