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

    def weights(self) -> torch.Tensor:
        """[P, L, K]: each (layer, segment) weight, sigmoid of its logit within the gate."""
        weights = torch.sigmoid(self.logits)
        return weights * self.gate if self.gate is not None else weights

    def masks(self, G: Generator, segments: torch.Tensor) -> list[torch.Tensor]:
        weights = self.weights()  # [P, L, K]
        out = []
        for info in G.conv_layers:
            seg = resize_segments(segments, info.resolution, self.pool)  # [B, K, r, r]
            m = torch.einsum("pk,bkhw->bhw", weights[:, info.index - 1], seg)[:, None] \
                if weights.shape[0] == 1 else \
                torch.einsum("bk,bkhw->bhw", weights[:, info.index - 1], seg)[:, None]
            # at most 1 with either pool: "max" shares a cell wholly with every segment it
            # touches, and supplied masks may overlap; a weight above 1 would push the blend
            # past the edited branch
            out.append(m.clamp(max=1))
        return out

    def region(self, segments: torch.Tensor, resolution: int,
               layers: list[int] | None = None, image: torch.Tensor | None = None,
               gated: bool = False) -> torch.Tensor:
        """[B, 1, r, r]: the union of the selected segments at image resolution, each segment
        weighted by its largest weight over ``layers`` (1-based; None: all). With the original
        ``image`` the segments' edges are first snapped to its colours (``snap_segments``).
        The final composite keeps the original pixels outside it (see ``composite``).
        ``gated``: every segment the gate lets through at full weight (the region choice
        judges a candidate region as the hardened edit will use it)."""
        weights = self.weights()
        if gated and self.gate is not None:
            weights = (self.gate > 0).to(weights.dtype)
        if layers is not None:
            keep = torch.zeros(weights.shape[1], dtype=torch.bool, device=weights.device)
            keep[[i - 1 for i in layers if 1 <= i <= weights.shape[1]]] = True
            weights = weights * keep[None, :, None]
        return weighted_region(weights.amax(1), segments, resolution, image)

    def active(self, threshold: float = 0.5) -> torch.Tensor:
        """[P, L, K]: the (layer, segment) weights above ``threshold``."""
        return self.weights().detach() > threshold

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
EDGE_BAND = 3 / 64   # of the image side: the band inside a region's edge that takes the
                     # interior's change (3 px at 64 px, a 16-px layer's cell and a half)


@torch.no_grad()
def snap_segments(segments: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Segments [B, K, H, W] (upsampled from the catalogue's coarser grid, so their edges are
    blocky and can sit a pixel or two off the picture's edges) re-assigned near their edges by
    colour. Each pixel with more than one segment within SNAP_PIXELS is unmixed between the
    two whose mean colours in ``image`` [B, 3, H, W] are nearest: its share of each is where
    its colour lies on the line between their means (an anti-aliased pixel a quarter of the way
    from A's colour to B's is 3/4 A). Pixels with one segment around them keep it. Why: the
    final composite follows these edges; a blocky edge left a rim of the old colour round
    objects or cut into them, and a hard choice changed a mixed edge pixel wholly or not."""
    x = (image.detach().float() + 1) / 2
    seg = segments.float()
    if seg.shape[1] < 2:  # one supplied segment: nothing to unmix it with
        return seg
    area = seg.sum((2, 3)).clamp_min(1e-6)  # [B, K]
    mean = torch.einsum("bkhw,bchw->bkc", seg, x) / area[..., None]  # [B, K, 3]
    near = torch.nn.functional.max_pool2d(seg, 2 * SNAP_PIXELS + 1, stride=1,
                                          padding=SNAP_PIXELS) > 0
    dist = (x[:, None] - mean[..., None, None]).square().sum(2)  # [B, K, H, W]
    # a segment too thin to have an interior (a strip of the catalogue's edge cluster along an
    # outline) has a mixed mean colour: it takes no part in unmixing where a solid one is near
    solid = (-torch.nn.functional.max_pool2d(-seg, 3, stride=1, padding=1) > 0.5).flatten(2)
    solid_near = near & solid.any(2)[..., None, None]
    near = torch.where(solid_near.any(1, keepdim=True), solid_near, near)
    dist = dist.masked_fill(~near, float("inf"))
    two = dist.topk(2, dim=1, largest=False).indices  # [B, 2, H, W]: nearest, second
    m = mean.permute(0, 2, 1)[..., None, None]  # [B, 3, K, 1, 1]
    idx = two[:, None].expand(-1, 3, -1, -1, -1)  # [B, 3, 2, H, W]
    ends = torch.gather(m.expand(-1, -1, -1, *x.shape[-2:]), 2, idx)  # [B, 3, 2, H, W]
    a, b = ends[:, :, 0], ends[:, :, 1]
    line = a - b
    t = ((x - b) * line).sum(1) / line.square().sum(1).clamp_min(1e-6)  # [B, H, W]
    t = ((t - 0.1) / 0.8).clamp(0, 1)  # colour noise within 10 % of an end counts as pure
    second_ok = torch.isfinite(torch.gather(dist, 1, two[:, 1:2]))[:, 0]
    t = torch.where(second_ok, t, torch.ones_like(t))
    out = torch.zeros_like(seg)
    out.scatter_add_(1, two[:, :1], t[:, None])
    out.scatter_add_(1, two[:, 1:], (1 - t)[:, None])
    # pixels no segment reaches (supplied segments need not cover the picture) stay as given
    covered = near.any(1, keepdim=True)
    return torch.where(covered, out, seg)


def composite(edited: torch.Tensor, original: torch.Tensor, region: torch.Tensor
              ) -> torch.Tensor:
    """The final composite: the original plus ``region`` [B, 1, H, W] times the edit's change.
    Why (a departure from the paper, ``TrainConfig.composite``): coarse layers' masks are a
    few pixels wide, so the blended image also changes near the selected region (a user sees
    other objects tinted and reshaped); the composite confines every change to the selected
    segments at full resolution. Within EDGE_BAND of the region's edge (other segments and the
    picture's border alike) the change applied is the one the region's interior got, carried
    outward: there the blended image is spoilt by what the coarse layers' cells straddle, and
    taking it left a ring of the old colour round every object a background edit went round,
    and a frame at the border. Both invariants hold: region 0 gives G(w), 1 everywhere the
    blend."""
    change = edited - original
    band = max(1, round(EDGE_BAND * region.shape[-1]))
    inside = (region >= 0.5).to(change.dtype)
    # the interior: inside and at least ``band`` px from the region's edge and the picture's
    # border (unless the region is the whole picture: then the blend is returned as it is)
    whole = inside.flatten(1).amin(1)[:, None, None, None]  # [B, 1, 1, 1]: 1 if all inside
    padded = torch.nn.functional.pad(inside, [band] * 4)
    padded = torch.maximum(padded, whole * torch.ones_like(padded))
    deep = -torch.nn.functional.max_pool2d(-padded, 2 * band + 1, stride=1)
    known = deep
    filled = change * deep
    # every pixel the composite touches takes its value the round it is first reached and
    # keeps it, so an image's result does not depend on the others in its batch
    need = region > 0
    for _ in range(max(region.shape[-2:])):  # grow the interior's change one pixel a round
        if bool((known > 0)[need].all()):
            break
        total = torch.nn.functional.avg_pool2d(filled * known, 3, stride=1, padding=1,
                                               count_include_pad=False)
        weight = torch.nn.functional.avg_pool2d(known, 3, stride=1, padding=1,
                                                count_include_pad=False)
        grown = torch.where(weight > 0, total / weight.clamp_min(1e-6), filled)
        filled = torch.where(known > 0, filled, grown)
        grew = torch.maximum(known, (weight > 0).to(known.dtype))
        if torch.equal(grew, known):
            break  # nothing left within reach (no interior at all: the blend's own change)
        known = grew
    carried = torch.where(known > 0, filled, change)
    return original + region * torch.where(deep > 0, change, carried)


def weighted_region(weights: torch.Tensor, segments: torch.Tensor, resolution: int,
                    image: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 1, r, r]: segments [B, K, s, s] at image resolution, each weighted by ``weights``
    [P, K] (P: 1 for every image, or B), with their edges first snapped to the colours of
    ``image`` when given: the region a final composite keeps (SS's selected segments, CAN's
    kept clusters)."""
    seg = resize_segments(segments, resolution)
    if image is not None:
        seg = snap_segments(seg, image)
    eq = "pk,bkhw->bhw" if weights.shape[0] == 1 else "bk,bkhw->bhw"
    return torch.einsum(eq, weights.to(seg), seg)[:, None].clamp(0, 1)


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
