"""What the queue client makes of the histories and replies a ComfyUI server really sends,
including the sparse ones (a failed prompt without messages, an output without images, an
image without a subfolder), and the exact words a user reads for each outcome."""
from __future__ import annotations

import urllib.parse

import pytest

from coral_core import comfy_client
from coral_core.errors import InputError

WORKFLOW = {"1": {"class_type": "CoralDemoPhoto", "inputs": {"seed": 0}}}


def _serve(monkeypatch, history: dict, views: list | None = None) -> None:
    def server(url, path, body=None):
        if path == "/prompt":
            return 200, {"prompt_id": "p1"}
        if path.startswith("/history/"):
            return 200, history
        if path.startswith("/view?"):
            if views is not None:
                views.append(urllib.parse.parse_qs(path.split("?", 1)[1],
                                                   keep_blank_values=True))
            return 200, b"png"
        raise AssertionError(path)

    monkeypatch.setattr(comfy_client, "_request", server)
    monkeypatch.setattr(comfy_client.time, "sleep", lambda s: None)


def _queue(tmp_path, seeds=(1,)):
    return comfy_client.queue_across_servers(["http://a"], WORKFLOW, [], list(seeds), tmp_path,
                                             timeout=5, in_flight=2, poll=0)


@pytest.mark.parametrize("status", [
    {"status_str": "error", "completed": False},                       # no messages at all
    {"status_str": "error", "completed": False,
     "messages": [["execution_error", {"node_id": "1"}]]},             # no exception text
])
def test_a_failed_prompt_with_a_sparse_history_still_fails_with_a_reason(
        tmp_path, monkeypatch, status) -> None:
    _serve(monkeypatch, {"p1": {"status": status, "outputs": {}}})
    [job] = _queue(tmp_path)
    assert (job.status, job.error) == ("failed", "execution error")


@pytest.mark.parametrize("outputs", [None, {}, {"9": {}}, {"9": {"text": ["hello"]}}])
def test_a_finished_prompt_without_images_succeeds_with_no_files(tmp_path, monkeypatch,
                                                                 outputs) -> None:
    entry = {"status": {"completed": True}}
    if outputs is not None:
        entry["outputs"] = outputs
    _serve(monkeypatch, {"p1": entry})
    [job] = _queue(tmp_path)
    assert (job.status, job.files) == ("success", [])


def test_an_image_without_a_subfolder_is_fetched_with_an_empty_one(tmp_path, monkeypatch
                                                                   ) -> None:
    views: list = []
    _serve(monkeypatch, {"p1": {"status": {"completed": True}, "outputs": {
        "9": {"images": [{"filename": "a.png", "type": "output"}]}}}}, views)
    [job] = _queue(tmp_path)
    assert views == [{"filename": ["a.png"], "subfolder": [""], "type": ["output"]}]
    assert [p.name for p in job.files] == ["9_a.png"]


def test_a_history_that_does_not_know_the_prompt_yet_keeps_it_running(tmp_path, monkeypatch
                                                                      ) -> None:
    _serve(monkeypatch, {})
    results = comfy_client.queue_across_servers(["http://a"], WORKFLOW, [], [1], tmp_path,
                                                timeout=0.05, in_flight=1, poll=0)
    assert [(r.status, r.error) for r in results] == [("timeout", "not finished after 0.05s")]


@pytest.mark.parametrize("reply, error", [
    ((400, {"error": "bad node"}), '{"error": "bad node"}'),   # JSON as the server sent it
    ((500, "server error"), "server error"),                   # text as it is, not quoted
])
def test_a_rejected_prompt_carries_the_server_s_exact_words(tmp_path, monkeypatch, reply,
                                                            error) -> None:
    monkeypatch.setattr(comfy_client, "_request", lambda *a, **k: reply)
    monkeypatch.setattr(comfy_client.time, "sleep", lambda s: None)
    results = _queue(tmp_path, seeds=(1, 2))
    assert [(r.status, r.error) for r in results] == [("rejected", error)] * 2


def test_with_every_server_gone_the_reason_is_said_exactly(tmp_path, monkeypatch) -> None:
    def refused(*a, **k):
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(comfy_client, "_request", refused)
    monkeypatch.setattr(comfy_client.time, "sleep", lambda s: None)
    results = _queue(tmp_path, seeds=(1,))
    assert [(r.status, r.error) for r in results] == [("failed", "no server left answering")]


def test_a_node_without_inputs_is_no_seed_target() -> None:
    wf = {"1": {"class_type": "Note"}, "2": {"class_type": "A", "inputs": {"seed": 1}}}
    assert comfy_client.seed_inputs(wf) == [("2", "seed")]


def test_an_override_needs_a_node_in_its_name_not_in_its_value() -> None:
    for item in ("seed=1.5", "seed=a.b=c"):
        with pytest.raises(InputError, match="NODE.INPUT=VALUE"):
            comfy_client.apply_overrides(WORKFLOW, [item])


def test_a_class_type_with_a_dot_is_named_in_full() -> None:
    wf = {"1": {"class_type": "pack.Loader", "inputs": {"steps": 1}}}
    out = comfy_client.apply_overrides(wf, ["pack.Loader.steps=5"])
    assert out["1"]["inputs"] == {"steps": 5}


def test_a_prompt_still_running_stays_queued_until_it_completes(tmp_path, monkeypatch) -> None:
    polls = []

    def server(url, path, body=None):
        if path == "/prompt":
            return 200, {"prompt_id": "p1"}
        if path.startswith("/history/"):
            polls.append(path)
            if len(polls) < 3:  # known to the server, not finished yet
                return 200, {"p1": {"status": {"completed": False, "status_str": "running"}}}
            if len(polls) == 3:  # an error page instead of a history: ask again later
                return 500, "internal error"
            return 200, {"p1": {"status": {"completed": True}, "outputs": {}}}
        raise AssertionError(path)

    monkeypatch.setattr(comfy_client, "_request", server)
    [job] = comfy_client.queue_across_servers(["http://a"], WORKFLOW, [], [1], tmp_path,
                                              timeout=30, in_flight=1, poll=0.0)
    assert (job.status, job.error) == ("success", "") and len(polls) >= 4


def test_an_image_the_server_will_not_send_is_not_written(tmp_path, monkeypatch) -> None:
    def server(url, path, body=None):
        if path == "/prompt":
            return 200, {"prompt_id": "p1"}
        if path.startswith("/history/"):
            return 200, {"p1": {"status": {"completed": True}, "outputs": {
                "9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}}}
        return 404, b"no such image"

    monkeypatch.setattr(comfy_client, "_request", server)
    monkeypatch.setattr(comfy_client.time, "sleep", lambda s: None)
    [job] = _queue(tmp_path)
    assert (job.status, job.files) == ("success", []) and not any(tmp_path.rglob("*.png"))


def test_a_history_without_the_prompt_gives_no_outputs(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(comfy_client, "_request", lambda *a, **k: (200, {}))
    job = comfy_client.QueuedPrompt("seed1", prompt_id="p1", status="success")
    assert comfy_client._download_outputs("http://a", job, tmp_path) == []
