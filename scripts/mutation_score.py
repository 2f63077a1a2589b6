"""Mutation score per module with mutmut 3 (issue 28): not part of CI (it is long).

    .venv/bin/python scripts/mutation_score.py                 # the default module set
    .venv/bin/python scripts/mutation_score.py coral_core.validate coral_core.seeds

Why mutmut: it is maintained, mutates with libcst (so every mutant is valid Python), records
in a first run which tests reach each function and then runs only those per mutant, and keeps
its results in ``mutants/`` so a re-run tests only mutants of code that changed. Its settings
are in pyproject.toml ([tool.mutmut]). The score printed is killed (or timed out) / tested per
module; survivors are listed so each can be read with ``mutmut show NAME``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODULES = ("coral_core.validate", "coral_core.seeds", "coral_core.formats.bounded_json",
                   "coral_core.editing.pruning", "coral_core.cache")


def main(argv: list[str]) -> int:
    modules = tuple(argv) or DEFAULT_MODULES
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    globs = [f"{m}.*" for m in modules]
    run = subprocess.run([mutmut, "run", "--max-children", "2", *globs], cwd=ROOT, env=env)
    if run.returncode != 0:
        print(f"mutmut run failed ({run.returncode})", file=sys.stderr)
        return run.returncode
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=ROOT, env=env,
                         capture_output=True, text=True).stdout
    status: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for line in out.splitlines():
        name, _, state = line.strip().rpartition(": ")
        module = next((m for m in modules if name.startswith(m + ".")), None)
        if module is None:
            continue
        status[module][state] += 1
        if state == "survived":
            survivors[module].append(name)
    print(f"{'module':42} {'killed':>7} {'survived':>9} {'other':>6} {'score':>6}")
    for module in modules:
        c = status[module]
        killed = c["killed"] + c["timeout"]
        tested = killed + c["survived"]
        other = sum(c.values()) - tested
        score = killed / tested if tested else float("nan")
        print(f"{module:42} {killed:7d} {c['survived']:9d} {other:6d} {score:6.2f}")
    for module in modules:
        for name in survivors[module]:
            print(f"  survived: {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
