#!/usr/bin/env python3
"""Build a UI-format workflow (what people drag into ComfyUI) from an API-format one.

The node schemas come from a running server's /object_info, so widget order and defaults are
exactly what the front end expects. Usage:
    python scripts/api_to_ui.py --server URL workflows/api/x.json example_workflows/x.json
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def has_control_widget(name: str, spec: list) -> bool:
    """The front end's rule (1.32, useIntWidget): an INT gets a "control after generate"
    widget when its spec says so, or, if the spec is silent, when it is named seed/noise_seed.
    Its value sits right after the INT's in widgets_values."""
    if spec[0] != "INT":
        return False
    opts = spec[1] if len(spec) > 1 else {}
    return bool(opts.get("control_after_generate", name in ("seed", "noise_seed")))


def convert(api: dict, object_info: dict, title: str = "") -> dict:
    ids = {key: i + 1 for i, key in enumerate(api)}
    depth: dict[str, int] = {}

    def node_depth(key: str) -> int:
        if key not in depth:
            ups = [v[0] for v in api[key]["inputs"].values() if isinstance(v, list)]
            depth[key] = 1 + max((node_depth(u) for u in ups), default=-1)
        return depth[key]

    links, nodes = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    for key, node in api.items():
        schema = object_info[node["class_type"]]
        spec_all = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
        for _name, value in node["inputs"].items():
            if isinstance(value, list):
                src, slot = value
                link_id = len(links) + 1
                links.append([link_id, ids[src], slot, ids[key], None,
                              object_info[api[src]["class_type"]]["output"][slot]])
                out_links.setdefault((src, slot), []).append(link_id)
    rows: dict[int, int] = {}
    for key in api:  # every node's depth (the run order below reads them)
        node_depth(key)
    output_col = 1 + max(node_depth(k) for k, n in api.items()
                         if n["class_type"] not in IMAGE_OUTPUTS)
    placed_outputs = 0
    for key, node in api.items():
        schema = object_info[node["class_type"]]
        spec_all = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
        inputs, widgets = [], []
        for name, spec in spec_all.items():
            value = node["inputs"].get(name)
            if isinstance(value, list):
                link = next(lk for lk in links if lk[3] == ids[key] and lk[4] is None)
                link[4] = len(inputs)
                entry = {"name": name, "type": link[5], "link": link[0]}
                if is_widget(spec):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
                if is_widget(spec):
                    widgets.append(spec[1].get("default") if len(spec) > 1 else None)
            elif is_widget(spec):
                if value is None:
                    opts = spec[1] if len(spec) > 1 else {}
                    value = opts.get("default", spec[0][0] if isinstance(spec[0], list) else "")
                widgets.append(value)
                if has_control_widget(name, spec):
                    widgets.append("fixed")
            else:
                inputs.append({"name": name, "type": spec[0], "link": None})
        outputs = [{"name": n, "type": t, "links": out_links.get((key, i), []), "slot_index": i}
                   for i, (t, n) in enumerate(zip(schema["output"], schema["output_name"]))]
        # stacked down each column by real heights, so no node overlaps the one below it;
        # the Train and Invert nodes also hold the front end's live view (web/js). Image
        # outputs go to a grid of OUTPUT_COLUMNS right of everything else, so their previews
        # sit side by side instead of in one tall column
        height = 60 + 26 * (len(widgets) + max(len(inputs), len(outputs)))
        height += EXTRA_HEIGHT.get(node["class_type"], 0)
        if node["class_type"] in IMAGE_OUTPUTS:
            col = output_col + placed_outputs % OUTPUT_COLUMNS
            placed_outputs += 1
        else:
            col = node_depth(key)
        y = rows.get(col, NOTE_HEIGHT + 100 if col == 0 and title in NOTES else 60)
        rows[col] = y + height + 60
        width = OUTPUT_WIDTH if node["class_type"] in IMAGE_OUTPUTS else 320
        nodes.append({"id": ids[key], "type": node["class_type"],
                      "pos": [40 + 360 * col, y],
                      "size": [width, height], "flags": {}, "order": 0,
                      "mode": 0, "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": node["class_type"]},
                      "widgets_values": widgets,
                      **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title")
                         else {})})
    order = sorted(nodes, key=lambda n: depth[next(k for k, v in ids.items() if v == n["id"])])
    for i, n in enumerate(order):
        n["order"] = i
    if title in NOTES:  # what the template does and what to change first, top left
        nodes.append({"id": NOTE_ID, "type": "Note", "pos": [40, 60],
                      "size": [320, NOTE_HEIGHT], "flags": {}, "order": len(nodes), "mode": 0,
                      "inputs": [], "outputs": [], "properties": {"text": ""},
                      "widgets_values": [NOTES[title]], "color": "#432", "bgcolor": "#653"})
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links),
            "nodes": nodes,
            "links": links, "groups": [], "config": {},
            "extra": {"info": {"name": title}} if title else {}, "version": 0.4}


# Height of what a node shows below its widgets: the pack's live-training panel and saved
# names (web/js/coral_live_training.js), and the image preview of ComfyUI's output nodes (a
# 64-px picture drawn at the node's width), so no node below is overlapped by a preview.
PREVIEW_HEIGHT = 270
OUTPUT_WIDTH = 300
OUTPUT_COLUMNS = 2
IMAGE_OUTPUTS = ("SaveImage", "PreviewImage")
EXTRA_HEIGHT = {"CoralTrainEdit": 140, "CoralTrainEditSimple": 140, "CoralInvert": 140,
                "CoralSaveEdit": 30, "CoralApplyEdit": PREVIEW_HEIGHT,
                "CoralSaveLatents": 30, "SaveImage": PREVIEW_HEIGHT,
                "PreviewImage": PREVIEW_HEIGHT}
NOTE_HEIGHT = 200
# The Note's id, far above any other node's: the front end keeps a run's image previews by
# node id across workflows, and a Note sharing an id with another template's Save Image node
# showed (and grew to fit) that picture when a user opened this template after running that.
NOTE_ID = 99
# One Note per template: what it does, what to change first.
NOTES = {
    "train_apply_visualise": (
        "Train an edit for a prompt on the demo portraits, apply it, look at the masks.\n\n"
        "Change first: the prompt in Train Edit (e.g. 'a red background', 'a face with "
        "blond hair'), then queue; for the shapes world pick the '[demo] shapes' generator "
        "and CLIP ('a red circle'). Re-queueing with only Apply's strength changed does not "
        "retrain.\n\n"
        "Outputs: edited and original side by side, the per-layer mask grid, the mask "
        "overlay; the edit is saved to models/coral_edits."),
    "apply_saved_edit": (
        "Apply a saved edit to a batch of seeds, with the originals beside them.\n\n"
        "Change first: the edit in Load Edit (yours from models/coral_edits), the seeds in "
        "Sample Latents, the strength in Apply Edit (0 = original, 1 = as trained)."),
    "invert_photo_and_edit": (
        "Project a photo into the generator (inversion), then apply a saved edit to it.\n\n"
        "Change first: replace Demo Photo by a Load Image node with your photo (the "
        "generator must be able to draw it), then the edit in Load Edit."),
    "segments_from_masks": (
        "Segment selection with regions from any mask node: the edit may only use the "
        "regions the masks give. Here the blue channel of a portrait on a blue background, "
        "thresholded, is its background, and the prompt recolours it.\n\n"
        "Change first: the threshold in Threshold Mask (which pixels form the region), or "
        "connect masks from your own segmentation node; then the prompt."),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("api", nargs="+", help="API workflow(s); last argument is the output "
                                          "folder when several are given")
    args = p.parse_args()
    with urllib.request.urlopen(args.server + "/object_info") as r:
        info = json.loads(r.read())
    *sources, dest = args.api
    for src in sources:
        out = Path(dest) / Path(src).name if Path(dest).is_dir() else Path(dest)
        out.write_text(json.dumps(convert(json.loads(Path(src).read_text()), info,
                                          Path(src).stem), indent=2))
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
