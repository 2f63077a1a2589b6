"""NVlabs generator records as the restricted unpickler hands them over: the config read from
the records' own attributes (with the fallbacks real pickles of each code base need), the
weights flattened in ``state_dict`` order, and a named refusal for every record that is not an
unconditional StyleGAN2 generator."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from coral_core.errors import ModelFormatError
from coral_core.formats import nvlabs
from coral_core.formats.loader import file_fields_checked
from coral_core.formats.safe_pickle import PersistentRecord, load_plain_pickle
from fabricate import random_generator, tiny_config, write_nvlabs_pickle

P = Path("net.pkl")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(generator, its G_ema record) for a skip and a resnet generator."""
    out = {}
    for arch, clamp in (("skip", 256.0), ("resnet", None)):
        G = random_generator(tiny_config(architecture=arch, conv_clamp=clamp, mapping_layers=3))
        path = tmp_path_factory.mktemp(arch) / "g.pkl"
        out[arch] = (G, load_plain_pickle(write_nvlabs_pickle(G, path))["G_ema"])
    return out


def _rec(made, arch: str = "skip") -> PersistentRecord:
    return copy.deepcopy(made[arch][1])


def _cfg(rec: PersistentRecord) -> dict:
    return json.loads(nvlabs.config_from_record(rec, P).to_json())


def _mods(rec: PersistentRecord) -> tuple[PersistentRecord, PersistentRecord]:
    return rec.modules["synthesis"], rec.modules["mapping"]


@pytest.mark.parametrize("arch", ["skip", "resnet"])
def test_the_config_read_from_the_records_is_the_generators(made, arch: str) -> None:
    G, rec = made[arch]
    assert _cfg(_rec(made, arch)) == json.loads(G.cfg.to_json())
    loaded, notes = nvlabs.generator_from_nvlabs({"G_ema": rec, "G": rec}, P)
    z = G.z_from_seeds([4])
    with torch.no_grad():
        assert torch.equal(loaded.synthesize(loaded.mapping_ws(z)), G.synthesize(G.mapping_ws(z)))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_each_setting_falls_back_where_real_pickles_keep_it(made) -> None:
    base = _cfg(_rec(made))
    rec = _rec(made)
    syn, mapping = _mods(rec)
    fc0 = mapping.modules["fc0"]
    conv = syn.modules["b4"].modules["conv1"]
    last = syn.modules[f"b{base['img_resolution']}"]
    # the mapping's learning-rate multiplier: fc0's bias gain, then the kwargs, then 0.01
    del fc0.state["bias_gain"]
    rec.state["_init_kwargs"]["mapping_kwargs"]["lr_multiplier"] = 0.05
    assert _cfg(rec)["mapping_lr_multiplier"] == 0.05
    del rec.state["_init_kwargs"]["mapping_kwargs"]["lr_multiplier"]
    assert _cfg(rec)["mapping_lr_multiplier"] == 0.01
    # the conv clamp: the layer's, then the synthesis kwargs'
    del conv.state["conv_clamp"]
    rec.state["_init_kwargs"]["synthesis_kwargs"]["conv_clamp"] = 128.0
    assert _cfg(rec)["conv_clamp"] == 128.0
    rec.state["_init_kwargs"]["synthesis_kwargs"]["conv_clamp"] = None
    assert _cfg(rec)["conv_clamp"] is None
    conv.state["conv_clamp"] = np.float32(64.0)  # numpy scalars, as NVlabs stores some
    assert _cfg(rec)["conv_clamp"] == 64.0
    # noise on unless the layer says otherwise
    del conv.state["use_noise"]
    assert _cfg(rec)["use_noise"] is True
    conv.state["use_noise"] = False
    assert _cfg(rec)["use_noise"] is False
    # mapping depth: the network's, then the kwargs', then 8
    del mapping.state["num_layers"]
    assert _cfg(rec)["mapping_layers"] == 3
    del rec.state["_init_kwargs"]["mapping_kwargs"]["num_layers"]
    assert _cfg(rec)["mapping_layers"] == 8
    # w_avg's decay and the image channels: their defaults
    del mapping.state["w_avg_beta"]
    assert _cfg(rec)["w_avg_beta"] == 0.995
    del rec.state["img_channels"]
    assert _cfg(rec)["img_channels"] == 3
    # the architecture: the last block's, then the kwargs', then skip
    last.state["architecture"] = "resnet"
    assert _cfg(rec)["architecture"] == "resnet"
    del last.state["architecture"]
    rec.state["_init_kwargs"]["synthesis_kwargs"]["architecture"] = "orig"
    assert _cfg(rec)["architecture"] == "orig"
    del rec.state["_init_kwargs"]["synthesis_kwargs"]["architecture"]
    assert _cfg(rec)["architecture"] == "skip"


def test_flat_kwargs_of_the_stylegan3_code_base_are_read(made) -> None:
    base = _cfg(_rec(made))
    rec = _rec(made)
    nested = rec.state["_init_kwargs"].pop("synthesis_kwargs")
    rec.state["_init_kwargs"].update(channel_base=nested["channel_base"],
                                     channel_max=nested["channel_max"])
    rec.state["_init_kwargs"]["mapping_kwargs"] = {}
    got = _cfg(rec)
    assert got["channel_base"] == base["channel_base"]
    assert got["channel_max"] == base["channel_max"]


def test_numbers_stored_as_numpy_scalars_are_plain_numbers(made) -> None:
    base = _cfg(_rec(made))
    rec = _rec(made)
    for key in ("z_dim", "w_dim", "img_resolution", "num_ws"):
        rec.state[key] = np.int64(rec.state[key])
    assert _cfg(rec) == base
    assert nvlabs._num(None, 7) == 7 and nvlabs._num(np.float64(2.5)) == 2.5
    assert nvlabs._num(3) == 3 and nvlabs._num(None) is None


def test_channel_defaults_that_do_not_fit_the_weights_are_named(made) -> None:
    rec = _rec(made)
    del rec.state["_init_kwargs"]["synthesis_kwargs"]["channel_base"]
    del rec.state["_init_kwargs"]["synthesis_kwargs"]["channel_max"]
    with pytest.raises(ModelFormatError) as err:
        nvlabs.config_from_record(rec, P)
    const = rec.modules["synthesis"].modules["b4"].state["_parameters"]["const"]
    assert str(err.value) == (f"{P}: b4 has {const.shape[0]} channels but channel_base=32768"
                              f"/channel_max=512 imply 512")


def _without(rec: PersistentRecord, module: str) -> PersistentRecord:
    del rec.state["_modules"][module]
    return rec


@pytest.mark.parametrize("change, words", [
    (lambda r: _without(r, "synthesis"), "NVlabs Generator without synthesis/mapping networks"),
    (lambda r: _without(r, "mapping"), "NVlabs Generator without synthesis/mapping networks"),
    (lambda r: r.modules["synthesis"].state["_modules"].update(input=r.modules["mapping"]),
     "Only StyleGAN2 / StyleGAN2-ADA generators are supported, including StyleGAN2 models "
     "trained with the stylegan3 code base."),
    (lambda r: _without(r.modules["synthesis"], "b4"), "this is a StyleGAN3 generator"),
    (lambda r: r.state.update(c_dim=np.int64(10)),
     "this is a class-conditional generator (c_dim=10); only unconditional"),
    (lambda r: r.state.update(img_resolution=64), "synthesis network is missing blocks b4 or b64"),
    (lambda r: r.modules["synthesis"].modules["b4"].state["_modules"].pop("conv1"),
     "synthesis network is missing blocks b4 or b32"),
    (lambda r: r.state.update(num_ws=99), "num_ws 99 does not match resolution 32"),
    (lambda r: r.modules["mapping"].modules["fc0"].state.update(bias_gain=0.0),
     "invalid mapping lr multiplier 0.0"),
    (lambda r: r.modules["mapping"].modules["fc0"].state.update(bias_gain=-0.01),
     "mapping_lr_multiplier must be a finite number >= 0, got -0.01"),
    (lambda r: r.modules["mapping"].modules["fc0"].state.update(bias_gain=math.inf),
     "mapping_lr_multiplier must be a finite number >= 0, got inf"),
    (lambda r: r.state.update(z_dim="abc"), "not a valid generator file"),
])
def test_records_that_are_not_an_unconditional_stylegan2_are_named(made, change,
                                                                   words: str) -> None:
    rec = _rec(made)
    change(rec)
    with pytest.raises(ModelFormatError) as err, file_fields_checked(P, "generator"):
        nvlabs.config_from_record(rec, P)  # inside the loaders' boundary, as a user meets it
    assert str(err.value).startswith(f"{P}: ") and words in str(err.value)


def test_weights_flatten_in_state_dict_order_without_what_state_dict_leaves_out(made) -> None:
    G, _ = made["skip"]
    rec = _rec(made)
    flat = nvlabs.flatten_state_dict(rec, P)
    assert list(flat) == list(G.state_dict())
    fc0 = rec.modules["mapping"].modules["fc0"]
    fc0.state["_parameters"]["bias"] = None  # a layer without bias
    fc0.state["_buffers"]["scratch"] = torch.zeros(2)
    fc0.state["_non_persistent_buffers_set"] = {"scratch"}
    fc0.state["_buffers"]["kept"] = torch.ones(1)
    fc0.state["_modules"]["not_a_module"] = {"x": 1}
    flat = nvlabs.flatten_state_dict(rec, P)
    assert "mapping.fc0.bias" not in flat and "mapping.fc0.scratch" not in flat
    assert list(flat).index("mapping.fc0.kept") == list(flat).index("mapping.fc0.weight") + 1


def test_flattening_is_bounded_in_depth_and_size(made, monkeypatch) -> None:
    rec = _rec(made)
    deepest, stack = 0, [(rec, 0)]
    while stack:
        r, depth = stack.pop()
        deepest = max(deepest, depth)
        stack += [(c, depth + 1) for c in r.modules.values() if isinstance(c, PersistentRecord)]
    monkeypatch.setattr(nvlabs, "MAX_MODULE_DEPTH", deepest - 1)
    with pytest.raises(ModelFormatError, match=f"modules nested more than {deepest - 1} levels"):
        nvlabs.flatten_state_dict(rec, P)
    monkeypatch.setattr(nvlabs, "MAX_MODULE_DEPTH", deepest)
    nvlabs.flatten_state_dict(rec, P)
    n_weights = len(nvlabs.flatten_state_dict(rec, P))
    monkeypatch.setattr(nvlabs, "MAX_STATE_ENTRIES", n_weights - 1)
    with pytest.raises(ModelFormatError, match=f"names more than {n_weights - 1} weights "
                       r"\(shared sub-modules repeated without end\?\); no StyleGAN2 "
                       "generator has that many$"):
        nvlabs.flatten_state_dict(rec, P)
    monkeypatch.setattr(nvlabs, "MAX_STATE_ENTRIES", n_weights)
    assert len(nvlabs.flatten_state_dict(rec, P)) == n_weights
    # modules without weights, shared many times over: counted as they are visited
    leaf = PersistentRecord("Leaf", {}, "")
    hub = PersistentRecord("Hub", {"_modules": {f"m{i}": leaf for i in range(10)}}, "")
    monkeypatch.setattr(nvlabs, "MAX_STATE_ENTRIES", 10)
    with pytest.raises(ModelFormatError, match=r"more than 10 sub-modules \(shared sub-modules "
                       r"repeated without end\?\); no StyleGAN2 generator has that many$"):
        nvlabs.flatten_state_dict(hub, P)
    monkeypatch.setattr(nvlabs, "MAX_STATE_ENTRIES", 11)
    assert nvlabs.flatten_state_dict(hub, P) == {}


def test_weights_that_do_not_fit_the_config_are_refused_by_name(made) -> None:
    G, rec = made["skip"]
    state = dict(nvlabs.flatten_state_dict(rec, P))
    with pytest.raises(ModelFormatError, match=r"non-tensor entries in the weights: \['w'\]"):
        nvlabs.build_generator(G.cfg, {**state, "w": 3}, P)
    small = {k: v.flatten()[:1] for k, v in state.items()}
    with pytest.raises(ModelFormatError, match="refused before allocating") as err:
        nvlabs.build_generator(G.cfg, small, P)
    assert f"needs at least {G.cfg.weight_count_lower_bound()} weights" in str(err.value)
    extra = {**state, "synthesis.extra": torch.zeros(1)}
    with pytest.raises(ModelFormatError, match="the weights do not fit a StyleGAN2 generator"):
        nvlabs.build_generator(G.cfg, extra, P)
    half = {k: v.half() for k, v in state.items()}  # stored in fp16: loaded as fp32
    built = nvlabs.build_generator(G.cfg, half, P)
    assert all(p.dtype == torch.float32 for p in built.parameters())


def test_the_generator_is_picked_from_what_the_file_holds(made, tmp_path: Path) -> None:
    G, ema = made["skip"]
    other = load_plain_pickle(write_nvlabs_pickle(random_generator(G.cfg, seed=9),
                                                  tmp_path / "o.pkl"))["G"]
    picked, notes = nvlabs._pick_generator({"G": other, "G_ema": ema, "D": 1}, P)
    assert picked is ema and notes == []  # the averaged generator, as NVlabs' own tools use
    picked, notes = nvlabs._pick_generator({"G": other, "augment_pipe": None}, P)
    assert picked is other
    assert notes == ["file has no G_ema; using the instantaneous generator G"]
    picked, notes = nvlabs._pick_generator(ema, P)  # torch.save(G), as PTI writes
    assert picked is ema and notes == []
    d = PersistentRecord("Discriminator", {}, "")
    cases = [({"D": d, "b": 1}, f"{P}: this NVlabs pickle holds only a discriminator (keys "
                                "['D', 'b']); a generator (G_ema) is needed"),
             ({"G_ema": "not a record", "x": 2}, f"{P}: NVlabs pickle without a generator: "
                                                 "keys ['G_ema', 'x']"),
             ([ema], f"{P}: unexpected top-level object list"),
             (d, f"{P}: expected an NVlabs Generator, found a 'Discriminator' object")]
    for top, message in cases:
        with pytest.raises(ModelFormatError) as err:
            nvlabs._pick_generator(top, P)
        assert str(err.value) == message


def test_one_class_is_conditional_and_a_missing_c_dim_is_none(made) -> None:
    rec = _rec(made)
    del rec.state["c_dim"]
    assert _cfg(rec) == _cfg(_rec(made))
    rec.state["c_dim"] = 1
    with pytest.raises(ModelFormatError, match=r"class-conditional generator \(c_dim=1\)"):
        nvlabs.config_from_record(rec, P)


def test_a_block_or_layer_stored_without_its_parts_falls_back(made) -> None:
    base = _cfg(_rec(made))
    rec = _rec(made)
    syn, mapping = _mods(rec)
    del mapping.state["_modules"]["fc0"]  # no first layer to read the gain from
    rec.state["_init_kwargs"]["mapping_kwargs"]["lr_multiplier"] = 0.02
    assert _cfg(rec)["mapping_lr_multiplier"] == 0.02
    del syn.modules["b4"].state["_parameters"]  # no constant to check the channels against
    rec.state["_init_kwargs"]["synthesis_kwargs"]["channel_max"] = 16
    assert _cfg(rec)["channel_max"] == 16 != base["channel_max"]
