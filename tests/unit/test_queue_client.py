"""The queue client's bookkeeping across several servers (issue 28: it had no unit test):
servers simulated in-process, dying at random moments, including half-way through
downloading a finished prompt's outputs (a real e2e run found that one raising out of
``queue_across_servers``). Property: every prompt completes exactly once, its outputs come from
the server that finished it, nothing half-downloaded is kept, no server gets more than
``in_flight`` of our prompts at a time."""
from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coral_core import comfy_client

EXAMPLES = int(os.environ.get("CORAL_FUZZ_EXAMPLES", "150"))
WORKFLOW = {"1": {"class_type": "CoralDemoPhoto", "inputs": {"seed": 0}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}


class FakeServers:
    """Servers that finish a prompt after ``work`` polls of its history and die (refuse every
    request from then on) after ``lives[server]`` requests; None never dies."""

    def __init__(self, lives: dict[str, int | None], work: int, in_flight: int) -> None:
        self.lives, self.work, self.in_flight = lives, work, in_flight
        self.requests = {s: 0 for s in lives}
        self.prompts: dict[str, dict] = {}  # prompt id -> server, seed, polls
        self.next_id = 0
        self.most_in_flight = {s: 0 for s in lives}

    def request(self, server: str, path: str, body: dict | None = None):
        self.requests[server] += 1
        life = self.lives[server]
        if life is not None and self.requests[server] > life:
            raise ConnectionResetError(104, "Connection reset by peer")
        if path == "/prompt":
            self.next_id += 1
            pid = f"{server.split('//')[1]}-{self.next_id}"
            seed = body["prompt"]["1"]["inputs"]["seed"]
            self.prompts[pid] = {"server": server, "seed": seed, "polls": 0}
            running = sum(1 for p in self.prompts.values()
                          if p["server"] == server and p["polls"] <= self.work)
            self.most_in_flight[server] = max(self.most_in_flight[server], running)
            return 200, {"prompt_id": pid}
        if path.startswith("/history/"):
            pid = path.split("/")[-1]
            p = self.prompts[pid]
            assert p["server"] == server, "history asked of a server that never had the prompt"
            p["polls"] += 1
            if p["polls"] <= self.work:
                return 200, {}
            image = {"filename": f"{pid}.png", "subfolder": "", "type": "output"}
            return 200, {pid: {"status": {"completed": True}, "outputs": {"9": {"images":
                                                                                [image]}}}}
        if path.startswith("/view?"):
            name = urllib.parse.parse_qs(path[len("/view?"):])["filename"][0]
            pid = name[:-len(".png")]
            assert self.prompts[pid]["server"] == server
            return 200, f"{self.prompts[pid]['seed']} from {server}".encode()
        raise AssertionError(path)


def _run(tmp_path: Path, monkeypatch, lives: dict[str, int | None], work: int,
         in_flight: int, seeds: list[int], timeout: float = 60) -> tuple[list, FakeServers]:
    fake = FakeServers(lives, work, in_flight)
    monkeypatch.setattr(comfy_client, "_request", fake.request)
    monkeypatch.setattr(comfy_client.time, "sleep", lambda s: None)
    results = comfy_client.queue_across_servers(list(lives), WORKFLOW, [], seeds, tmp_path,
                                                timeout=timeout, in_flight=in_flight, poll=0)
    return results, fake


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lives=st.lists(st.one_of(st.none(), st.integers(0, 40)), min_size=1, max_size=4),
       work=st.integers(0, 3), in_flight=st.integers(1, 3),
       count=st.integers(1, 8))
def test_every_prompt_completes_once_whatever_servers_die(tmp_path_factory, monkeypatch, lives,
                                                           work, in_flight, count) -> None:
    if all(life is not None for life in lives):
        lives[-1] = None  # one server always survives
    servers = {f"http://s{i}": life for i, life in enumerate(lives)}
    out = tmp_path_factory.mktemp("out")
    seeds = list(range(100, 100 + count))
    results, fake = _run(out, monkeypatch, servers, work, in_flight, seeds)
    assert [r.status for r in results] == ["success"] * count
    assert sorted(p.name for p in out.iterdir()) == sorted(f"seed{s}" for s in seeds)
    for seed, job in zip(seeds, results):
        files = list((out / f"seed{seed}").iterdir())
        assert files == job.files and len(files) == 1  # one completion's outputs, once
        assert files[0].read_bytes().startswith(f"{seed} from ".encode())
    assert all(n <= in_flight for n in fake.most_in_flight.values())


def test_no_server_answering_fails_every_prompt_with_the_reason(tmp_path, monkeypatch) -> None:
    results, _ = _run(tmp_path, monkeypatch, {"http://a": 0, "http://b": 0}, 0, 2, [1, 2, 3])
    assert [r.status for r in results] == ["failed"] * 3
    assert all("no server left answering" in r.error for r in results)


def test_a_server_dying_mid_download_keeps_no_partial_outputs(tmp_path, monkeypatch) -> None:
    """Server a: queue (1), history (2: finished), history again in the download (3), then it
    dies at the /view (4); the prompt is run again on b and only b's output is kept."""
    results, fake = _run(tmp_path, monkeypatch, {"http://a": 3, "http://b": None}, 0, 1, [7])
    assert results[0].status == "success"
    assert [f.read_bytes() for f in results[0].files] == [b"7 from http://b"]
    assert list((tmp_path / "seed7").iterdir()) == results[0].files


@pytest.mark.parametrize("reply", [(400, {"error": "bad node"}), (500, "server error")])
def test_a_rejected_prompt_is_reported_not_retried(tmp_path, monkeypatch, reply) -> None:
    calls = []

    def rejecting(server, path, body=None):
        calls.append(path)
        return reply

    monkeypatch.setattr(comfy_client, "_request", rejecting)
    monkeypatch.setattr(comfy_client.time, "sleep", lambda s: None)
    results = comfy_client.queue_across_servers(["http://a"], WORKFLOW, [], [1, 2], tmp_path,
                                                timeout=5, in_flight=1, poll=0)
    assert [r.status for r in results] == ["rejected", "rejected"] and calls == ["/prompt"] * 2
    assert results[0].error


def test_overrides_set_inputs_by_id_or_class_type_and_leave_the_workflow_alone() -> None:
    """``coral queue --set NODE.INPUT=VALUE``: NODE is an id or a class_type (every node of
    that type), VALUE is JSON when it parses (numbers, lists, booleans) and text otherwise,
    ``=`` inside the value is kept, and the caller's workflow is never changed."""
    wf = {"1": {"class_type": "CoralDemoPhoto", "inputs": {"seed": 0}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}}}
    before = json.loads(json.dumps(wf))
    out = comfy_client.apply_overrides(wf, ["1.seed=7", "SaveImage.filename_prefix=x=y",
                                            "CoralDemoPhoto.extra=[1, 2.5]", "2.flag=true",
                                            "3.text=not json"])
    assert wf == before
    assert out["1"]["inputs"] == {"seed": 7, "extra": [1, 2.5]}
    assert out["2"]["inputs"]["filename_prefix"] == out["3"]["inputs"]["filename_prefix"] == "x=y"
    assert out["2"]["inputs"]["flag"] is True and out["3"]["inputs"]["text"] == "not json"
    assert out["2"]["inputs"]["images"] == ["1", 0]
    assert comfy_client.apply_overrides(wf, []) == wf


@pytest.mark.parametrize("item", ["1seed=3", "seed", "=3", "9.seed=3", "Nope.seed=1"])
def test_a_bad_override_is_refused_with_what_was_given(item) -> None:
    from coral_core.errors import InputError

    wf = {"1": {"class_type": "CoralDemoPhoto", "inputs": {"seed": 0}}}
    with pytest.raises(InputError) as err:
        comfy_client.apply_overrides(wf, [item])
    assert repr(item) in str(err.value) or item.split(".")[0] in str(err.value)


def test_seeds_go_to_every_seed_input_and_a_workflow_without_one_is_refused() -> None:
    from coral_core.errors import InputError

    wf = {"1": {"class_type": "A", "inputs": {"seed": 0}},
          "2": {"class_type": "B", "inputs": {"seed": ["1", 0]}},  # a link, not a widget
          "3": {"class_type": "C", "inputs": {"seed": 5}}}
    out = comfy_client._prompt_for(wf, 42)
    assert out["1"]["inputs"]["seed"] == out["3"]["inputs"]["seed"] == 42
    assert out["2"]["inputs"]["seed"] == ["1", 0] and wf["1"]["inputs"]["seed"] == 0
    assert comfy_client._prompt_for(wf, None) == wf
    with pytest.raises(InputError, match="no node in the workflow has a 'seed' input"):
        comfy_client._prompt_for({"1": {"class_type": "A", "inputs": {}}}, 3)


def test_prompts_not_finished_in_time_are_reported_as_timeouts(tmp_path, monkeypatch) -> None:
    results, _ = _run(tmp_path, monkeypatch, {"http://a": None}, 10**9, 2, [1, 2],
                      timeout=0.3)
    assert [r.status for r in results] == ["timeout", "timeout"]
    assert all("not finished after" in r.error for r in results)


def test_without_seeds_one_prompt_runs_and_its_outputs_land_in_one_folder(tmp_path,
                                                                          monkeypatch) -> None:
    fake = FakeServers({"http://a": None}, 1, 1)
    monkeypatch.setattr(comfy_client, "_request", fake.request)
    monkeypatch.setattr(comfy_client.time, "sleep", lambda s: None)
    results = comfy_client.queue_across_servers(["http://a/"], WORKFLOW, ["1.seed=9"], None,
                                                tmp_path, timeout=60, in_flight=2, poll=0)
    assert [r.label for r in results] == ["prompt"] and results[0].status == "success"
    assert [p.name for p in tmp_path.iterdir()] == ["prompt"]
    assert results[0].files[0].read_bytes() == b"9 from http://a"  # the override reached it


@pytest.mark.parametrize("kinds,kept", [(["output", "temp", "output"], ["9", "11"]),
                                        (["temp", "temp"], ["9", "10"])])
def test_saved_images_are_collected_and_previews_only_when_nothing_was_saved(
        tmp_path, monkeypatch, kinds: list[str], kept: list[str]) -> None:
    """A node's own preview (Apply Edit's before | after, type "temp") is not a result when the
    workflow saved its images; a workflow that only previews still returns its pictures."""
    outputs = {str(9 + i): {"images": [{"filename": f"n{9 + i}.png", "subfolder": "",
                                        "type": kind}]} for i, kind in enumerate(kinds)}

    def server(url, path, body=None):
        if path == "/prompt":
            return 200, {"prompt_id": "p1"}
        if path.startswith("/history/"):
            return 200, {"p1": {"status": {"completed": True}, "outputs": outputs}}
        if path.startswith("/view?"):
            return 200, b"png"
        raise AssertionError(path)

    monkeypatch.setattr(comfy_client, "_request", server)
    monkeypatch.setattr(comfy_client.time, "sleep", lambda s: None)
    results = comfy_client.queue_across_servers(["http://a"], WORKFLOW, [], [1], tmp_path,
                                                timeout=30, in_flight=1, poll=0)
    assert sorted(p.name.split("_")[0] for p in results[0].files) == sorted(kept)


def test_a_prompt_that_failed_on_the_server_reports_its_exception(tmp_path, monkeypatch) -> None:
    """The history of a failed prompt: status_str "error" with the execution_error message
    (another message kind before it); one without a message still fails, with a reason."""
    def history_of(pid: str, messages: list) -> dict:
        return {pid: {"status": {"status_str": "error", "completed": False,
                                 "messages": messages}, "outputs": {}}}

    replies = {"p1": history_of("p1", [["execution_start", {}], ["execution_error", {
        "exception_message": "CUDA out of memory"}]]), "p2": history_of("p2", [])}

    def server(server_url, path, body=None):
        if path == "/prompt":
            return 200, {"prompt_id": f"p{body['prompt']['1']['inputs']['seed']}"}
        assert path.startswith("/history/"), path
        return 200, replies[path.rsplit("/", 1)[1]]

    monkeypatch.setattr(comfy_client, "_request", server)
    monkeypatch.setattr(comfy_client.time, "sleep", lambda s: None)
    results = comfy_client.queue_across_servers(["http://a"], WORKFLOW, [], [1, 2], tmp_path,
                                                timeout=5, in_flight=2, poll=0)
    assert [(r.status, r.error) for r in results] == [("failed", "CUDA out of memory"),
                                                      ("failed", "execution error")]
    assert not any(tmp_path.iterdir())


def test_the_user_is_told_where_each_prompt_went_and_when_a_server_left(tmp_path, monkeypatch,
                                                                         capsys) -> None:
    """Server a answers the first prompt, then dies: the console names the prompt, its server
    and id, then that a went away and its prompts were queued elsewhere; every prompt body
    names the client (the server's progress messages go to it), and each picture is fetched
    with its subfolder and type (a server keeps temp and output apart)."""
    fake = FakeServers({"http://a": 1, "http://b": None}, 0, 1)
    bodies, views = [], []

    def recording(server, path, body=None):
        if body is not None:
            bodies.append(body)
        if path.startswith("/view?"):
            views.append(urllib.parse.parse_qs(path[len("/view?"):], keep_blank_values=True))
        return fake.request(server, path, body)

    monkeypatch.setattr(comfy_client, "_request", recording)
    monkeypatch.setattr(comfy_client.time, "sleep", lambda s: None)
    results = comfy_client.queue_across_servers(["http://a", "http://b/"], WORKFLOW, [], [1, 2],
                                                tmp_path, timeout=60, in_flight=1, poll=0)
    assert [r.status for r in results] == ["success", "success"]
    err = capsys.readouterr().err
    assert err.splitlines() == ["queued seed1 on http://a: a-1", "queued seed2 on http://b: b-2",
                                "http://a: went away; re-queueing its prompts",
                                "queued seed1 on http://b: b-3"]
    ids = {b["client_id"] for b in bodies}
    assert len(ids) == 1 and all(len(i) == 32 for i in ids)
    assert views and all(v["type"] == ["output"] and v["subfolder"] == [""] for v in views)


def test_a_server_that_refuses_connections_hands_its_prompt_on_first_in_line(
        tmp_path, monkeypatch, capsys) -> None:
    results, _ = _run(tmp_path, monkeypatch, {"http://a": 0, "http://b": None}, 0, 2, [1, 2, 3])
    assert [r.status for r in results] == ["success"] * 3
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "http://a: not answering; its prompts go elsewhere"
    assert err[1].startswith("queued seed1 on http://b: ")  # seed 1 kept its place in line
