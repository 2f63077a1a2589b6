"""``coral queue``: many prompts through the host API, failures reported, the rest run."""
from __future__ import annotations

import json

from coral_core.cli import main
from coral_core.comfy_client import queue_workflows

from comfy_server import ROOT


def test_queue_seeds_and_collect_outputs(server, tmp_path) -> None:
    wf = json.loads((ROOT / "workflows" / "api" / "apply_saved_edit.json").read_text())
    results = queue_workflows(server.url, wf, ["CoralSampleLatents.batch_size=2"], [0, 1, 2],
                              tmp_path, timeout=600)
    assert [r.status for r in results] == ["success"] * 3
    assert all(len(r.files) == 4 for r in results)  # 2 edited + 2 original per prompt
    names = {p.parent.name for r in results for p in r.files}
    assert names == {"seed0", "seed1", "seed2"}


def test_failed_prompts_are_reported_without_stopping_the_rest(server, tmp_path) -> None:
    wf = json.loads((ROOT / "workflows" / "api" / "apply_saved_edit.json").read_text())
    bad = dict(wf)
    bad["4"] = {"class_type": "CoralLoadEdit", "inputs": {"edit_name": "missing.safetensors"}}
    rejected = queue_workflows(server.url, bad, [], [0], None, timeout=300)
    assert rejected[0].status == "rejected" and "value_not_in_list" in rejected[0].error
    # empty prompt: accepted, fails while running; the next seeds still run
    train = json.loads((ROOT / "workflows" / "api" / "train_apply_visualise.json").read_text())
    results = queue_workflows(server.url, train, ["CoralTrainEdit.prompt= ",
                                                  "CoralTrainEdit.steps=2"], [0, 1], None,
                              timeout=600)
    assert [r.status for r in results] == ["failed", "failed"]
    assert "prompt is empty" in results[0].error
    ok = queue_workflows(server.url, wf, [], [3], None, timeout=300)
    assert ok[0].status == "success"


def test_queue_cli_exit_codes(server, tmp_path, capsys) -> None:
    path = ROOT / "workflows" / "api" / "apply_saved_edit.json"
    assert main(["queue", "--server", server.url, "--workflow", str(path), "--seeds", "4",
                 "--out", str(tmp_path)]) == 0
    assert "1 of 1 prompts succeeded" in capsys.readouterr().out
    ui = ROOT / "example_workflows" / "apply_saved_edit.json"
    assert main(["queue", "--server", server.url, "--workflow", str(ui)]) == 2
    assert "UI-format" in capsys.readouterr().err


def test_batch_spread_over_two_servers_survives_one_dying(server, tmp_path) -> None:
    """Two real servers on loopback; the second is killed mid-batch. Every prompt completes
    exactly once (its outputs in one folder per seed), nothing is lost or duplicated."""
    import threading
    import time

    from coral_core.comfy_client import queue_across_servers

    from comfy_server import ComfyServer

    second = ComfyServer(tmp_path / "second").start()
    wf = json.loads((ROOT / "workflows" / "api" / "apply_saved_edit.json").read_text())
    seeds = list(range(10, 18))
    out = tmp_path / "out"
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(results=queue_across_servers(
        [server.url, second.url], wf, ["CoralSampleLatents.batch_size=1"], seeds, out,
        timeout=900, in_flight=2, poll=0.2)))
    worker.start()
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not any((out / f"seed{s}").is_dir() for s in seeds):
            time.sleep(0.2)
        second.proc.kill()  # mid-batch: some of its prompts are still queued or running
    finally:
        worker.join(900)
        second.stop()
    results = box["results"]
    assert [r.status for r in results] == ["success"] * len(seeds)
    folders = sorted(p.name for p in out.iterdir())
    assert folders == sorted(f"seed{s}" for s in seeds)
    assert all(len(r.files) == 2 for r in results)  # edited + original, once each
