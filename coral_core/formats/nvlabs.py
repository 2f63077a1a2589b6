"""NVlabs StyleGAN2 / StyleGAN2-ADA network pickles (and PTI's ``torch.save``d generators).

The restricted unpickler turns the file into ``PersistentRecord``s; this module reads the
generator's hyper-parameters from the records' resolved attributes (never from the embedded
source), flattens its tensors into a state dict with ``nn.Module.state_dict`` names, and checks
that the result is a generator this engine can run.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFormatError
from ..stylegan import Generator, GeneratorConfig
from .safe_pickle import PersistentRecord


MAX_STATE_ENTRIES = 100_000  # a 1024-px StyleGAN2 generator has about 400
MAX_MODULE_DEPTH = 64


def flatten_state_dict(record: PersistentRecord, path: Path | str = "") -> "OrderedDict[str, Any]":
    """Parameters, then persistent buffers, then children: ``nn.Module.state_dict`` order.

    Iterative and bounded: a crafted file whose modules share children 40 levels deep names
    2^40 entries; walking it would hang the host, so more than MAX_STATE_ENTRIES entries or
    MAX_MODULE_DEPTH levels is refused.
    """
    out: OrderedDict[str, Any] = OrderedDict()
    stack: list[tuple[PersistentRecord, str, int]] = [(record, "", 0)]
    visited = 0
    while stack:
        rec, prefix, depth = stack.pop()
        visited += 1
        if visited > MAX_STATE_ENTRIES:
            raise ModelFormatError(f"{path}: refused: the network has more than "
                                   f"{MAX_STATE_ENTRIES} sub-modules (shared sub-modules "
                                   "repeated without end?); no StyleGAN2 generator has that many")
        if depth > MAX_MODULE_DEPTH:
            raise ModelFormatError(f"{path}: refused: modules nested more than "
                                   f"{MAX_MODULE_DEPTH} levels deep")
        st = rec.state
        for name, p in (st.get("_parameters") or {}).items():
            if p is not None:
                out[prefix + name] = p
        skip = set(st.get("_non_persistent_buffers_set") or ())
        for name, b in (st.get("_buffers") or {}).items():
            if b is not None and name not in skip:
                out[prefix + name] = b
        if len(out) > MAX_STATE_ENTRIES:
            raise ModelFormatError(f"{path}: refused: the network names more than "
                                   f"{MAX_STATE_ENTRIES} weights (shared sub-modules repeated "
                                   "without end?); no StyleGAN2 generator has that many")
        children = [(name, child) for name, child in (st.get("_modules") or {}).items()
                    if isinstance(child, PersistentRecord)]
        for name, child in reversed(children):  # LIFO: keep the module order
            stack.append((child, f"{prefix}{name}.", depth + 1))
    return out


def _num(value: Any, default: Any = None) -> Any:
    """NVlabs stores some attributes as numpy scalars; plain Python numbers are easier."""
    if value is None:
        return default
    return value.item() if hasattr(value, "item") else value


def _pick_generator(top: Any, path: Path) -> tuple[PersistentRecord, list[str]]:
    notes: list[str] = []
    rec: PersistentRecord | None = None
    if isinstance(top, PersistentRecord):
        rec = top  # torch.save(G) as PTI writes it
    elif isinstance(top, dict):
        for key in ("G_ema", "G"):
            if isinstance(top.get(key), PersistentRecord):
                rec = top[key]
                if key == "G":
                    notes.append("file has no G_ema; using the instantaneous generator G")
                break
        if rec is None:
            found = sorted(str(k) for k in top)
            if "D" in top:
                raise ModelFormatError(
                    f"{path}: this NVlabs pickle holds only a discriminator (keys {found}); a "
                    "generator (G_ema) is needed")
            raise ModelFormatError(f"{path}: NVlabs pickle without a generator: keys {found}")
    else:
        raise ModelFormatError(f"{path}: unexpected top-level object {type(top).__name__}")
    assert rec is not None  # every branch above found one or raised
    if rec.class_name != "Generator":
        raise ModelFormatError(
            f"{path}: expected an NVlabs Generator, found a {rec.class_name!r} object")
    return rec, notes


def config_from_record(rec: PersistentRecord, path: Path) -> GeneratorConfig:
    st = rec.state
    modules = rec.modules
    synthesis, mapping = modules.get("synthesis"), modules.get("mapping")
    if not isinstance(synthesis, PersistentRecord) or not isinstance(mapping, PersistentRecord):
        raise ModelFormatError(f"{path}: NVlabs Generator without synthesis/mapping networks")
    if "input" in synthesis.modules or "b4" not in synthesis.modules:
        raise ModelFormatError(
            f"{path}: this is a StyleGAN3 generator (alias-free synthesis, layers "
            f"{list(synthesis.modules)[:3]}...). Only StyleGAN2 / StyleGAN2-ADA generators are "
            "supported, including StyleGAN2 models trained with the stylegan3 code base.")
    c_dim = int(_num(st.get("c_dim"), 0))
    if c_dim > 0:
        raise ModelFormatError(
            f"{path}: this is a class-conditional generator (c_dim={c_dim}); only "
            "unconditional generators are supported")
    init_kwargs = st.get("_init_kwargs") or {}
    syn_kwargs = init_kwargs.get("synthesis_kwargs") or init_kwargs  # ADA nested, SG3 flat
    map_kwargs = init_kwargs.get("mapping_kwargs") or {}
    res = int(_num(st.get("img_resolution")))
    blocks = synthesis.modules
    last = blocks.get(f"b{res}")
    first = blocks["b4"]
    conv = first.modules.get("conv1")
    if not isinstance(last, PersistentRecord) or not isinstance(conv, PersistentRecord):
        raise ModelFormatError(f"{path}: synthesis network is missing blocks b4 or b{res}")
    fc0 = mapping.modules.get("fc0")
    lr = _num(fc0.attr("bias_gain"), None) if isinstance(fc0, PersistentRecord) else None
    if lr is None:
        lr = float(map_kwargs.get("lr_multiplier", 0.01))
    clamp = conv.attr("conv_clamp", syn_kwargs.get("conv_clamp"))
    use_noise = conv.attr("use_noise", True)
    const = first.state.get("_parameters", {}).get("const")
    ch4 = int(const.shape[0]) if const is not None else None
    channel_base = int(syn_kwargs.get("channel_base", 32768))
    channel_max = int(syn_kwargs.get("channel_max", 512))
    cfg = GeneratorConfig(
        img_resolution=res,
        z_dim=int(_num(st.get("z_dim"))),
        w_dim=int(_num(st.get("w_dim"))),
        img_channels=int(_num(st.get("img_channels"), 3)),
        mapping_layers=int(_num(mapping.attr("num_layers"), map_kwargs.get("num_layers", 8))),
        mapping_lr_multiplier=float(lr),
        w_avg_beta=float(_num(mapping.attr("w_avg_beta"), 0.995)),
        channel_base=channel_base,
        channel_max=channel_max,
        conv_clamp=None if clamp is None else float(_num(clamp)),
        architecture=str(last.attr("architecture", syn_kwargs.get("architecture", "skip"))),
        use_noise=bool(use_noise),
    )
    if ch4 is not None and ch4 != cfg.channels_at(4):
        raise ModelFormatError(f"{path}: b4 has {ch4} channels but channel_base={channel_base}"
                               f"/channel_max={channel_max} imply {cfg.channels_at(4)}")
    num_ws = _num(st.get("num_ws"))
    if num_ws is not None and int(num_ws) != cfg.num_ws:
        raise ModelFormatError(f"{path}: num_ws {num_ws} does not match resolution {res}")
    if cfg.mapping_lr_multiplier <= 0:  # negative or not finite: the config refused it
        raise ModelFormatError(f"{path}: invalid mapping lr multiplier {lr}")
    return cfg


def generator_from_nvlabs(top: Any, path: Path) -> tuple[Generator, list[str]]:
    rec, notes = _pick_generator(top, path)
    cfg = config_from_record(rec, path)
    state = flatten_state_dict(rec, path)
    return build_generator(cfg, state, path), notes


def build_generator(cfg: GeneratorConfig, state: dict[str, Any], path: Path) -> Generator:
    """Instantiate and load with ``strict=True``: every key and shape must match the config.

    The config is compared with the weights the file actually holds *before* the generator is
    built, so a header that declares a huge network is refused without allocating it.
    """
    tensors = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFormatError(f"{path}: non-tensor entries in the weights: {bad[:5]}")
    held = sum(int(v.numel()) for v in tensors.values())
    needed = cfg.weight_count_lower_bound()
    if needed > held:
        raise ModelFormatError(
            f"{path}: the config (z_dim {cfg.z_dim}, w_dim {cfg.w_dim}, channel_max "
            f"{cfg.channel_max}, {cfg.img_resolution}px) needs at least {needed} weights but "
            f"the file holds {held}: corrupt or crafted file, refused before allocating")
    G = Generator(cfg)
    try:
        G.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(
            f"{path}: the weights do not fit a StyleGAN2 generator with config "
            f"{cfg.to_json()}: {str(exc)[:600]}") from exc
    return G.train(False).requires_grad_(False)
