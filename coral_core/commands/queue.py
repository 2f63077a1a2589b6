"""``coral queue``: an API workflow queued on ComfyUI servers, many times (an HTTP client:
it never imports torch)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CoralError


def cmd_queue(args: argparse.Namespace) -> int:
    from ..comfy_client import queue_across_servers, queue_workflows
    from ..seeds import parse_seeds

    from ..formats.bounded_json import read_json_file

    # bounded (size, depth) before the JSON parser sees the file; errors name it
    workflow = read_json_file(Path(args.workflow), "API-format workflow",
                              max_bytes=16 * 1024 * 1024)
    if not isinstance(workflow, dict) or "nodes" in workflow:
        raise CoralError(f"{args.workflow}: this is a UI-format workflow; export it with "
                         "'Save (API)' or use the copy under workflows/api/")
    seeds = parse_seeds(args.seeds) if args.seeds else None
    servers = args.server or ["http://127.0.0.1:8188"]
    out = Path(args.out) if args.out else None
    if len(servers) == 1:
        results = queue_workflows(servers[0], workflow, args.set or [], seeds, out,
                                  args.timeout)
    else:
        results = queue_across_servers(servers, workflow, args.set or [], seeds, out,
                                       args.timeout, args.in_flight)
    failed = [r for r in results if r.status != "success"]
    for r in results:
        extra = f" ({len(r.files)} files)" if r.files else ""
        print(f"{r.label}: {r.status}{extra}" + (f": {r.error[:300]}" if r.error else ""))
    print(f"{len(results) - len(failed)} of {len(results)} prompts succeeded")
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-command(s) to the ``coral`` parser."""
    s = sub.add_parser("queue", help="queue an API workflow on a ComfyUI server, many times")
    s.add_argument("--server", action="append", default=None,
                   help="ComfyUI URL (default http://127.0.0.1:8188); repeat to spread the "
                        "batch over several servers, with failover")
    s.add_argument("--in-flight", type=int, default=2,
                   help="several servers: prompts queued on each at a time")
    s.add_argument("--workflow", required=True, help="API-format workflow JSON")
    s.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                   help="override an input (NODE = id or class_type); repeatable")
    s.add_argument("--seeds", default=None, help="one prompt per seed, e.g. 0-99")
    s.add_argument("--out", default=None, help="download output images here")
    s.add_argument("--timeout", type=float, default=3600)
    s.set_defaults(run=cmd_queue)
