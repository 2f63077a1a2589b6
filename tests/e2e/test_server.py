"""The pack inside a real ComfyUI 0.3.75 server."""
from __future__ import annotations

EXPECTED_NODES = {"CoralLoadStyleGAN", "CoralLoadCLIP", "CoralSampleLatents", "CoralGenerate",
                  "CoralSaveLatents", "CoralLoadLatents", "CoralTrainEdit", "CoralTrainEditSimple",
                  "CoralSaveEdit",
                  "CoralLoadEdit", "CoralApplyEdit", "CoralVisualizeMasks", "CoralInvert",
                  "CoralDemoPhoto"}


def test_pack_imports_without_failure(server) -> None:
    lines = server.log_text().splitlines()
    assert any("CoralStyleCLIP" in line for line in lines), "the pack was not loaded at all"
    assert not [ln for ln in lines if "IMPORT FAILED" in ln and "CoralStyleCLIP" in ln]


def test_object_info_lists_every_node_with_tooltips(server) -> None:
    info = server.get("/object_info")
    assert EXPECTED_NODES <= set(info)
    for name in EXPECTED_NODES:
        node = info[name]
        assert node["category"].startswith("CoralStyleCLIP/") and node["description"]
        for section in ("required", "optional"):
            for inp, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{inp} lacks a tooltip"
        if node["output"]:
            assert len(node["output_tooltips"]) == len(node["output"])
