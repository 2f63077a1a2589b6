"""Unsupervised segments: a per-generator catalogue of K clusters of intermediate features.

As in "Editing in Style" (Collins et al. 2020): features of one synthesis layer, gathered over
sampled latents, are clustered once (spherical k-means); each pixel of any image is then labelled
with its nearest centre, so segment k means the same part on every image, for any domain and with
no extra weights. The catalogue is saved (safetensors, keyed by the generator's fingerprint) and
embedded in every SS edit, so an edit applies from its file alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_path
from ..errors import EditMismatchError
from ..stylegan import Generator

# Segments are clustered at min(image, this) px: at 64 px the catalogue's finer clusters cost
# the default per-image edit and CAN their object-keeping (measurements: docs/method.md).
CATALOGUE_RESOLUTION = 32
MAX_CLUSTER_POINTS = 50_000  # feature vectors k-means sees, drawn evenly from the samples


@dataclass
class SegmentCatalogue:
    centres: torch.Tensor  # [K, C], unit norm
    layer: int             # conv layer index whose features are clustered
    fingerprint: str       # generator fingerprint
    # 0: segment k is cluster k on every image (per-prompt edits need that). N > 0: each
    # cluster is split into its connected pieces, the N largest of each image kept apart (per
    # image edits): clusters group by appearance, so two objects of one kind share a cluster
    # (on the demo world the target object's cluster covered the other object in 12 of 24
    # recolouring cases), and an edit could not name one object without the other.
    pieces: int = 0
    # Pieces of fewer cells than this join the neighbour they share most border with (0: off;
    # edits saved before it existed apply with 0, as they trained). See absorb_fragments.
    absorb: int = 0
    # Hand the cells of outline rings and border strips to the parts beside them
    # (dissolve_boundaries); False for edits saved before it existed, which apply as trained.
    dissolve: bool = False

    @property
    def k(self) -> int:
        return int(self.centres.shape[0])

    @property
    def count(self) -> int:
        """Segments per image: the clusters, or the kept pieces."""
        return self.pieces or self.k

    def with_pieces(self, pieces: int, absorb: int = 0) -> "SegmentCatalogue":
        return SegmentCatalogue(self.centres, self.layer, self.fingerprint, pieces, absorb,
                                self.dissolve)

    def with_dissolve(self, dissolve: bool) -> "SegmentCatalogue":
        return SegmentCatalogue(self.centres, self.layer, self.fingerprint, self.pieces,
                                self.absorb, dissolve)

    def id(self) -> str:
        import hashlib

        h = hashlib.sha256(self.centres.detach().cpu().numpy().tobytes()).hexdigest()[:12]
        pieces = f"-P{self.pieces}" if self.pieces else ""
        pieces += f"-A{self.absorb}" if self.pieces and self.absorb else ""
        pieces += "-D" if self.dissolve else ""
        return f"{self.fingerprint}-L{self.layer}-K{self.k}-{h}{pieces}"

    def segments(self, features: list[torch.Tensor]) -> torch.Tensor:
        """One-hot segments [B, count, r, r] of the images whose conv features are given."""
        f = F.normalize(features[self.layer - 1].detach().to(torch.float32), dim=1)
        sim = torch.einsum("bchw,kc->bkhw", f, self.centres.to(f.device))
        ids = dissolve_boundaries(sim.argmax(1), sim) if self.dissolve else sim.argmax(1)
        clusters = F.one_hot(ids, self.k).permute(0, 3, 1, 2).to(torch.float32)
        return connected_pieces(clusters, self.pieces, self.absorb) if self.pieces else clusters

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            save_file({"centres": self.centres.contiguous().cpu()}, str(tmp),
                      metadata={"layer": str(self.layer), "fingerprint": self.fingerprint})

    @classmethod
    def load(cls, path: Path) -> "SegmentCatalogue":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return cls(f.get_tensor("centres"), int(meta["layer"]), meta["fingerprint"])


def default_layer(G: Generator) -> int:
    """The last conv layer at resolution min(R, CATALOGUE_RESOLUTION)."""
    target = min(G.img_resolution, CATALOGUE_RESOLUTION)
    return max(c.index for c in G.conv_layers if c.resolution == target)


@torch.no_grad()
def build_catalogue(G: Generator, k: int = 6, samples: int = 64, layer: int | None = None,
                    truncation: float = 0.7, iterations: int = 30, seed: int = 0
                    ) -> SegmentCatalogue:
    layer = layer or default_layer(G)
    g = torch.Generator().manual_seed(seed)
    device = G.w_avg.device
    z = torch.randn(samples, G.z_dim, generator=g).to(device)
    feats = []
    chunks = z.split(16)
    per_chunk = MAX_CLUSTER_POINTS // len(chunks)
    for chunk in chunks:
        # only up to the clustered layer: at 1024 px the full pass's features of 16 samples
        # would take gigabytes, the first layers up to 64 px some 130 MB, subsampled at once
        ws = G.mapping_ws(chunk, truncation)
        f = G.features_up_to(ws, G.make_noise(ws.shape[0], "const"), layer)[layer - 1]
        f = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        if f.shape[0] > per_chunk:
            f = f[torch.randperm(f.shape[0], generator=g)[:per_chunk].to(device)]
        feats.append(f)
    x = F.normalize(torch.cat(feats).to(torch.float32), dim=1)
    centres = x[torch.randperm(x.shape[0], generator=g)[:k].to(device)].clone()
    for _ in range(iterations):
        assign = (x @ centres.T).argmax(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = F.normalize(members.mean(0), dim=0)
            else:  # re-seed an empty cluster at the worst-served point
                centres[j] = x[(x @ centres.T).max(1).values.argmin()]
    return SegmentCatalogue(centres.cpu(), layer, G.fingerprint())


def default_cache_dir() -> Path:
    """Where computed catalogues are kept: $CORAL_CACHE_DIR, else the user's cache folder;
    never beside the user's own files or in a models folder that lists edits."""
    import os

    if os.environ.get("CORAL_CACHE_DIR"):
        return Path(os.environ["CORAL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "coralstyleclip" / "catalogues"


def catalogue_for(G: Generator, k: int, cache_dir: Path | None = None,
                  layer: int | None = None) -> SegmentCatalogue:
    """Load the cached catalogue for this generator (by fingerprint), or build and cache it
    (in ``cache_dir``, default ``default_cache_dir()``)."""
    layer = layer or default_layer(G)
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    if cache_dir is not None:
        path = Path(cache_dir) / f"catalogue-{G.fingerprint()}-L{layer}-K{k}.safetensors"
        if path.is_file():
            cat = SegmentCatalogue.load(path)
            if cat.fingerprint != G.fingerprint():
                raise EditMismatchError(f"{path}: catalogue was built for another generator")
            return cat
    cat = build_catalogue(G, k=k, layer=layer)
    if cache_dir is not None:
        try:
            cat.save(path)
        except OSError:
            pass  # a read-only models folder only costs a rebuild next time
    return cat


def _piece_labels(member: torch.Tensor) -> torch.Tensor:
    """One-hot segments [B, K, h, w] (bool) -> a piece id per cell [B, h, w]: each connected
    piece (8-neighbourhood) of each segment is named by the largest flat index (1-based) of
    its cells, so ids are unique across segments and deterministic."""
    _, _, h, w = member.shape
    index = torch.arange(1, h * w + 1, dtype=torch.float32, device=member.device)
    labels = torch.where(member, index.view(1, 1, h, w), torch.zeros(()))
    for _ in range(h * w):  # each round spreads a piece's largest index one pixel further
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * member
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.amax(1).long()


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x [B, h, w] read at (y + dy, x + dx), the border continued outward."""
    padded = F.pad(x[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    h, w = x.shape[-2:]
    return padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w].to(x.dtype)


# A piece is thin when under this share of its cells are interior (their 3x3 neighbourhood
# wholly inside the piece and the picture): outline rings are one or two cells wide, with a
# stray interior cell where they bulge; a 3x3 block (1 of 9 interior) already counts as a part.
THIN_INTERIOR_SHARE = 0.1


def dissolve_boundaries(clusters: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """Cluster ids [B, h, w] with every *boundary piece* handed cell by cell to the adjacent
    cluster its features are closest to (``sim`` [B, K, h, w]: each cell's similarity to each
    centre). A boundary piece is thin (``THIN_INTERIOR_SHARE``) and touches two or more thick
    pieces, or one and the picture's border. Why: where two parts meet, the generator's
    features mix and form clusters of their own, one or two cells wide, that
    follow every outline (on the face world, a ring round every head, often two rings side by
    side); no prompt names such a ring, so a background edit stopped short of the head and
    left a band of the old colour round it; along the border, a strip left a frame. Thin
    pieces side by side count as one zone; a zone inside one piece (an eye inside a face)
    stays apart."""
    b, k, h, w = sim.shape
    labels = _piece_labels(F.one_hot(clusters, k).permute(0, 3, 1, 2).bool())
    # a cell on the picture's border is never interior: a strip two cells wide along the
    # border has no inside
    interior = torch.zeros_like(labels, dtype=torch.bool)
    interior[:, 1:-1, 1:-1] = True
    for dy, dx in _NEIGHBOURS:
        interior &= _shifted(labels, dy, dx) == labels
    out = clusters.clone()
    edge = torch.zeros(h, w, dtype=torch.bool, device=clusters.device)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    for i in range(b):
        ids, size = torch.unique(labels[i], return_counts=True)
        inner = torch.stack([(labels[i][interior[i]] == j).sum() for j in ids])
        thick = torch.isin(labels[i], ids[inner >= THIN_INTERIOR_SHARE * size])
        pending = torch.zeros(h, w, dtype=torch.bool, device=clusters.device)
        zones = _piece_labels(~thick[None, None])[0]  # thin pieces side by side: one zone
        for zone in torch.unique(zones[~thick]):
            cells = zones == zone
            near = F.max_pool2d(cells[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
            touches = len(torch.unique(labels[i][near & thick]))
            if touches >= 2 or (touches == 1 and bool((cells & edge).any())):
                pending |= cells
        while bool(pending.any()):
            best = torch.full((h, w), -float("inf"), device=clusters.device)
            choice = out[i].clone()
            for dy, dx in _NEIGHBOURS:
                ready = ~_shifted(pending[None], dy, dx)[0]
                cand = _shifted(out[i][None], dy, dx)[0]
                score = torch.gather(sim[i], 0, cand[None])[0]
                better = pending & ready & (score > best)
                best = torch.where(better, score, best)
                choice = torch.where(better, cand, choice)
            took = pending & torch.isfinite(best)
            if not bool(took.any()):
                break
            out[i] = torch.where(took, choice, out[i])
            pending &= ~took
    return out


def connected_pieces(segments: torch.Tensor, limit: int, absorb: int = 0) -> torch.Tensor:
    """One-hot segments [B, K, r, r] -> their connected pieces (8-neighbourhood) [B, limit, r,
    r], largest first; the pieces beyond ``limit`` share the last slot. Pieces of fewer than
    ``absorb`` cells first join a neighbour (``absorb_fragments``). Deterministic (ties go by
    position), so training and applying an edit see the same pieces."""
    b, _, h, w = segments.shape
    pixel_label = _piece_labels(segments > 0.5)  # [B, h, w]: one piece id per pixel
    if absorb > 0:
        pixel_label = torch.stack([absorb_fragments(lab, absorb) for lab in pixel_label])
    pixel_label = pixel_label.flatten(1)
    out = torch.zeros(b, limit, h * w, device=segments.device)
    for i in range(b):
        ids, inverse, counts = torch.unique(pixel_label[i], return_inverse=True,
                                            return_counts=True)
        order = sorted(range(len(ids)), key=lambda j: (-int(counts[j]), int(ids[j])))
        rank = torch.empty(len(ids), dtype=torch.long)
        rank[torch.tensor(order, dtype=torch.long)] = torch.arange(len(ids))
        slot = rank.to(inverse.device)[inverse].clamp(max=limit - 1)
        out[i].scatter_(0, slot[None], 1.0)
    return out.view(b, limit, h, w)


def absorb_fragments(labels: torch.Tensor, min_cells: int) -> torch.Tensor:
    """Piece labels [h, w] with every piece of fewer than ``min_cells`` cells, and every strip
    along the picture's border too thin to have an interior, merged into the neighbouring
    piece it shares most border with (smallest first; ties go to the lower label). Why: the
    generator's features at the picture's corners and along its border form their own
    one-cell-wide clusters; left apart, a background edit never selects them and leaves a
    frame of the old colour (seen on 4 of 12 background edits). A real part is larger than a
    couple of cells at the catalogue's resolution, and has an interior where it meets the
    border."""
    labels = labels.clone()
    while True:
        ids, counts = torch.unique(labels, return_counts=True)
        small = [(int(c), int(i)) for i, c in zip(ids, counts)
                 if int(c) < min_cells or _thin_border_strip(labels == i)]
        if not small or len(ids) < 2:
            return labels
        _, fragment = min(small)
        mine = (labels == fragment).float()[None, None]
        ring = (F.max_pool2d(mine, 3, stride=1, padding=1)[0, 0] > 0) & (labels != fragment)
        neighbours, shared = torch.unique(labels[ring], return_counts=True)
        if len(neighbours) == 0:
            return labels
        best = max(range(len(neighbours)), key=lambda j: (int(shared[j]), -int(neighbours[j])))
        labels[labels == fragment] = neighbours[best]


def _thin_border_strip(piece: torch.Tensor) -> bool:
    """A piece [h, w] that touches the picture's border and has no cell whose 3x3
    neighbourhood (the border continued outward) lies wholly inside it."""
    edge = torch.cat([piece[0], piece[-1], piece[:, 0], piece[:, -1]])
    if not bool(edge.any()):
        return False
    padded = F.pad(piece[None, None].float(), (1, 1, 1, 1), mode="replicate")
    return not bool((-F.max_pool2d(-padded, 3, stride=1) > 0.5).any())


def resize_segments(segments: torch.Tensor, resolution: int, pool: str = "area"
                    ) -> torch.Tensor:
    """Downsample (``pool``: "area" averages, "max" keeps any coverage) or nearest-upsample
    segments to a layer's resolution."""
    r = segments.shape[-1]
    if r == resolution:
        return segments
    if pool == "max" and resolution < r:
        return F.adaptive_max_pool2d(segments, resolution)
    mode = "area" if resolution < r else "nearest"
    return F.interpolate(segments, size=(resolution, resolution), mode=mode)
