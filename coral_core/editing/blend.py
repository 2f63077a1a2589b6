"""Multi-layer feed-forward blending (the core equation of CoralStyleCLIP).

At every conv layer l both branches read the previous *blended* feature:
    f_o = Phi_l(f*_{l-1}, w_l),  f_e = Phi_l(f*_{l-1}, w_l + d_l),  f*_l = m_l f_e + (1 - m_l) f_o
and every toRGB output is blended with the mask of the conv layer it reads. Written as
``m * f_e + (1 - m) * f_o`` (not ``f_o + m (f_e - f_o)``) so that m = 1 gives f_e bit for bit;
with d = 0 the two mask-gradient terms are bitwise equal and cancel to exactly 0.

The edited branch is only computed where a mask can use it: a layer whose mask is ``None`` (above
``max_layer``, or before the first selected layer) or a frozen all-zero mask runs only the
original branch, which then equals the plain generator's computation exactly.

Where a mask is zero outside a small part of the map (an object; a pruned segment selection),
the edited branch runs only on the mask's bounding box plus the layer's receptive-field margin
(one input pixel either side, for the plain and the upsampling conv), which gives the same values
there as the whole-map computation (up to convolution rounding); outside the box the mask is
exactly 0, so the blend is the original branch there bit for bit, as before.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence, TypeGuard

import math

import torch

from ..stylegan.generator import ConvLayerInfo, Generator, ToRGBInfo
from ..stylegan.layers import SynthesisLayer, ToRGBLayer

MaskList = Sequence[torch.Tensor | None]


def _active(mask: torch.Tensor | None) -> TypeGuard[torch.Tensor]:
    if mask is None:
        return False
    if mask.requires_grad:
        return True
    return bool(mask.detach().abs().amax() > 0)


# Boxes covering more than this fraction of the feature map are not worth cropping to: the
# saving is small and the crop and paste have a cost (measured with `coral bench apply`).
BOX_MAX_FRACTION = 0.6

Box = tuple[int, int, int, int]  # rows y0:y1, columns x0:x1 of a feature map
Parts = list[tuple[slice, Box]]   # (samples, box) pairs whose edited branch is computed


def _support_box(support: torch.Tensor) -> Box | None:
    """The bounding box of a [r, r] boolean map, None if it is empty."""
    rows = support.any(dim=1).nonzero()
    if rows.numel() == 0:
        return None
    cols = support.any(dim=0).nonzero()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _area(box: Box) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


def mask_parts(mask: torch.Tensor) -> Parts | None:
    """Where the edited branch is needed: the bounding box of the mask's nonzero pixels over
    the whole batch, or, when that is too large (objects in different places), one box per
    sample; None (compute the whole map) where neither pays, i.e. the boxes would cover more
    than :data:`BOX_MAX_FRACTION` of the maps."""
    support = mask.detach().abs().amax(dim=1) > 0  # [B or 1, r, r]
    limit = BOX_MAX_FRACTION * support[0].numel()
    union = _support_box(support.any(dim=0))
    if union is None:
        return None
    if _area(union) <= limit:
        return [(slice(None), union)]
    if support.shape[0] == 1:
        return None
    boxes = [(i, _support_box(support[i])) for i in range(support.shape[0])]
    parts = [(slice(i, i + 1), box) for i, box in boxes if box is not None]
    if sum(_area(box) for _, box in parts) > limit * support.shape[0]:
        return None
    return parts


def _input_span(start: int, stop: int, up: int, margin: int, size: int) -> tuple[int, int]:
    """Input rows that output rows start:stop of a layer upsampling by ``up`` read."""
    return max(0, start // up - margin), min(size, math.ceil(stop / up) + margin)


def conv_on_box(layer: SynthesisLayer, x: torch.Tensor, w: torch.Tensor,
                noise: torch.Tensor | None, gain: float, box: Box) -> torch.Tensor:
    """``layer(x, w, noise, gain)[..., y0:y1, x0:x1]`` computed from an input crop.

    The 3x3 conv reads one input pixel either side of an output pixel. The upsampling conv
    (transposed conv to 2n+1 samples, then the 4-tap blur padded by one) makes output y from
    inputs ceil((y-3)/2)..floor((y+2)/2), which one input pixel either side of y0//2 ..
    ceil(y1/2) covers; the crop's own first and last transposed-conv samples are incomplete,
    and no requested output reads them. At the image border the crop ends where the map
    does, so the layer's zero padding is the whole map's.
    """
    y0, y1, x0, x1 = box
    ay, by = _input_span(y0, y1, layer.up, 1, x.shape[-2])
    ax, bx = _input_span(x0, x1, layer.up, 1, x.shape[-1])
    up = layer.up
    crop_noise = None if noise is None else \
        noise[..., ay * up:by * up, ax * up:bx * up]
    out = layer(x[..., ay:by, ax:bx], w, crop_noise, gain)
    return out[..., y0 - ay * up:y1 - ay * up, x0 - ax * up:x1 - ax * up]


def blend_parts(out: torch.Tensor, mask: torch.Tensor, parts: Parts,
                edited: Callable[[slice, Box], torch.Tensor]) -> torch.Tensor:
    """``mask * f_e + (1 - mask) * out`` where ``edited(samples, box)`` gives f_e on each part
    only; everywhere else the mask is exactly 0 and ``out`` is kept bit for bit."""
    # with gradients, the crops of ``out`` read below are saved for the backward pass: write
    # into a copy (parts never overlap, so reading ``out`` itself stays right)
    result = out.clone() if torch.is_grad_enabled() else out
    for samples, (y0, y1, x0, x1) in parts:
        m = (mask if mask.shape[0] == 1 else mask[samples])[..., y0:y1, x0:x1]
        kept = out[samples, :, y0:y1, x0:x1]
        result[samples, :, y0:y1, x0:x1] = m * edited(samples, (y0, y1, x0, x1)) + (1 - m) * kept
    return result


def _rows(t: torch.Tensor | None, samples: slice) -> torch.Tensor | None:
    """The samples' rows of a per-sample tensor; a shared one (batch 1) as it is."""
    return t if t is None or t.shape[0] == 1 else t[samples]


def _conv_part(layer: SynthesisLayer, x: torch.Tensor, w: torch.Tensor,
               noise: torch.Tensor | None, gain: float, samples: slice, box: Box
               ) -> torch.Tensor:
    """The edited conv branch for ``samples`` on ``box`` (see :func:`conv_on_box`)."""
    return conv_on_box(layer, x[samples], w[samples], _rows(noise, samples), gain, box)


def _torgb_part(layer: ToRGBLayer, x: torch.Tensor, w: torch.Tensor, samples: slice,
                box: Box) -> torch.Tensor:
    """The edited toRGB branch for ``samples`` on ``box`` (a 1x1 conv: no margin needed)."""
    return layer(x[samples, :, box[0]:box[1], box[2]:box[3]], w[samples])


class BlendRunner:
    """Layer runner for ``Generator.run_synthesis`` that computes the CORAL blend.

    ``edits`` is a list of (delta [B, N, D], masks); ``masks[l - 1]`` is layer l's mask
    [B or 1, 1, r_l, r_l] or None (layer not selected). Several edits stack: at every layer each
    one blends its edited branch over the result of the ones before it. ``noise`` is shared by
    all branches (re-drawing it per branch leaks noise into the edit).
    """

    def __init__(self, ws: torch.Tensor, edits: Sequence[tuple[torch.Tensor, MaskList]],
                 noise: Sequence[torch.Tensor | None], reuse: Sequence[torch.Tensor] = (),
                 recompute: bool = False) -> None:
        self.ws, self.edits, self.noise = ws, edits, noise
        # activation recomputation: keep only each layer's input for the backward pass and
        # run the layer again there (memory for time; the results are the same)
        self.recompute = recompute
        self.reuse = reuse
        self.edited_layers: list[int] = []

    def conv(self, info: ConvLayerInfo, layer: SynthesisLayer, x: torch.Tensor,
             gain: float) -> torch.Tensor:
        if info.index <= len(self.reuse):
            # before the first selected layer the blend *is* the original pass: reuse it
            return self.reuse[info.index - 1]
        if self.recompute and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._blend_layer, info, layer, x, gain, use_reentrant=False)
        return self._blend_layer(info, layer, x, gain)

    def _blend_layer(self, info: ConvLayerInfo, layer: SynthesisLayer, x: torch.Tensor,
                     gain: float) -> torch.Tensor:
        w = self.ws[:, info.w_index]
        noise = self.noise[info.index - 1]
        out = layer(x, w, noise, gain)
        for delta, masks in self.edits:
            mask = masks[info.index - 1]
            if _active(mask):
                w_e = w + delta[:, info.w_index]
                parts = mask_parts(mask)
                if parts is None:
                    f_e = layer(x, w_e, noise, gain)
                    out = mask * f_e + (1 - mask) * out
                else:
                    out = blend_parts(out, mask, parts, partial(
                        _conv_part, layer, x, w_e, noise, gain))
                if info.index not in self.edited_layers:  # recomputation runs this again
                    self.edited_layers.append(info.index)
        return out

    def torgb(self, info: ToRGBInfo, layer: ToRGBLayer, x: torch.Tensor) -> torch.Tensor:
        w = self.ws[:, info.w_index]
        out = layer(x, w)
        for delta, masks in self.edits:
            mask = masks[info.reads_layer - 1]
            if _active(mask):
                w_e = w + delta[:, info.w_index]
                parts = mask_parts(mask)
                if parts is None:
                    out = mask * layer(x, w_e) + (1 - mask) * out
                else:
                    out = blend_parts(out, mask, parts, partial(_torgb_part, layer, x, w_e))
        return out


def limit_layers(masks: MaskList, max_layer: int | None) -> list[torch.Tensor | None]:
    """``max_layer`` option: layers above k refuse new style changes (mask None)."""
    return [m if max_layer is None or i + 1 <= max_layer else None
            for i, m in enumerate(masks)]


def mask_policy(masks: MaskList, *, no_masks: bool = False,
                only_layers: Sequence[int] | None = None, max_layer: int | None = None,
                threshold: float | None = None) -> list[torch.Tensor | None]:
    """An edit's layer options applied to its selector's masks, in one order for training and
    for applying (so a trained edit applies as it trained): ``no_masks`` (the StyleCLIP-style
    baseline: 1 everywhere), ``only_layers`` (FEAT-style), an optional hard ``threshold``,
    then ``max_layer``."""
    out = list(masks)
    if no_masks:
        out = [None if m is None else torch.ones_like(m) for m in out]
    if only_layers is not None:
        out = [m if i + 1 in only_layers else None for i, m in enumerate(out)]
    if threshold is not None:
        out = [None if m is None else (m >= threshold).to(m.dtype) for m in out]
    return limit_layers(out, max_layer)


def blended_synthesis(G: Generator, ws: torch.Tensor, delta: torch.Tensor, masks: MaskList,
                      noise: Sequence[torch.Tensor | None] | None = None,
                      max_layer: int | None = None, recompute: bool = False) -> torch.Tensor:
    """The blended image x* for W+ codes ``ws`` [B, N, D] and offsets ``delta`` ([B|1, N, D])."""
    return stacked_synthesis(G, ws, [(delta, limit_layers(masks, max_layer))], noise,
                             recompute=recompute)


def first_active_layer(edits: Sequence[tuple[torch.Tensor, MaskList]]) -> int | None:
    layers = [i + 1 for _, masks in edits for i, m in enumerate(masks) if _active(m)]
    return min(layers) if layers else None


def stacked_synthesis(G: Generator, ws: torch.Tensor,
                      edits: Sequence[tuple[torch.Tensor, MaskList]],
                      noise: Sequence[torch.Tensor | None] | None = None,
                      original_features: Sequence[torch.Tensor] = (),
                      recompute: bool = False) -> torch.Tensor:
    """Several (delta, masks) edits applied one after another in a single blended pass.

    ``original_features`` (from a plain pass with the same ``noise``) are reused for the layers
    before the first selected one instead of being recomputed.
    """
    ws = G.check_ws(ws)
    prepared = []
    for delta, masks in edits:
        if len(masks) != len(G.conv_layers):
            raise ValueError(f"expected {len(G.conv_layers)} masks (one per conv layer), "
                             f"got {len(masks)}")
        prepared.append((delta.to(ws.dtype).expand(ws.shape[0], -1, -1), masks))
    if noise is None:
        if original_features:
            raise ValueError("reusing original features needs the noise they were made with")
        noise = G.make_noise(ws.shape[0], "const")
    first = first_active_layer(prepared)
    keep = len(G.conv_layers) if first is None else first - 1
    reuse = list(original_features[:keep])
    return G.run_synthesis(ws.shape[0], BlendRunner(ws, prepared, noise, reuse=reuse,
                                                    recompute=recompute))
