"""Mutation score per module with mutmut 3 (issue 28): not part of CI (it is long).

    .venv/bin/python scripts/mutation_score.py                       # the default module set
    .venv/bin/python scripts/mutation_score.py coral_core.comfy_client
    .venv/bin/python scripts/mutation_score.py --tests tests/unit/test_x.py coral_core.x
    .venv/bin/python scripts/mutation_score.py coral_core.editing   # every module of a package

Why mutmut: it is maintained, mutates with libcst (so every mutant is valid Python), records
in a first run which tests reach each function and then runs only those per mutant, and keeps
its results so a re-run tests only mutants of code that changed.

Why a scoped copy: mutmut mutates every file under its source paths and its first run executes
every selected test under its tracer; over the whole engine and the whole unit tier that is
23,000 mutants and a first run longer than the tier itself, which never finished on 2 cores.
Each run here works in ``.mutation/<name>/`` (ignored by git, kept between runs: mutmut's cache),
a copy of the tree whose pyproject.toml tells mutmut to mutate only the named modules' files
(``only_mutate``) and to run only the test files that exercise them (``MODULE_TESTS``, or
``--tests``). The score printed is killed (or timed out) over killed, survived and "no tests"
(a mutant no selected test reaches would go unnoticed too) per module, pooled per package;
survivors are listed so each can be read with ``mutmut show NAME`` in that folder. Survivors
that a reviewer judged equivalent (no input tells them apart) are listed with the reason in
``scripts/mutation_equivalents.txt``; the last column leaves them out of the count (killed /
non-equivalent, issue 28's figure). A listed mutant that is killed is simply killed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".mutation"
DEFAULT_MODULES = ("coral_core.validate", "coral_core.comfy_client", "coral_core.cache",
                   "coral_core.formats.bounded_json", "coral_core.formats.integrity")
# The test files that exercise each module (the unit tier's own tests of it, found with grep):
# mutmut then picks, per mutant, the tests among these that reach the mutated function.
MODULE_TESTS = {
    "coral_core.comfy_client": ["tests/unit/test_queue_client.py",
                                "tests/unit/test_queue_server.py",
                                "tests/unit/test_queue_wire.py",
                                "tests/unit/test_queue_history.py"],
    "coral_core.validate": ["tests/unit/test_validate.py", "tests/unit/test_bad_values.py",
                            "tests/unit/test_lost_work.py"],
    "coral_core.seeds": ["tests/unit/test_bad_values.py", "tests/unit/test_fuzz_parsers.py"],
    "coral_core.cache": ["tests/unit/test_cache.py", "tests/unit/test_cache_fingerprint.py",
                         "tests/unit/test_cache_residency.py"],
    "coral_core.formats.bounded_json": ["tests/unit/test_fuzz_parsers.py",
                                        "tests/unit/test_bounded_json.py"],
    "coral_core.formats.integrity": ["tests/unit/test_fuzz_parsers.py",
                                     "tests/unit/test_corrupt_files.py",
                                     "tests/unit/test_integrity_edges.py"],
    "coral_core.formats.safe_pickle": ["tests/unit/test_fuzz_parsers.py",
                                       "tests/unit/test_hostile_files.py",
                                       "tests/unit/test_safe_pickle_edges.py"],
    # The editing modules: their direct behaviour tests, which run in seconds (the trainer-level
    # tests also reach these modules but take minutes per mutant on 2 cores; without them the
    # score is a lower bound).
    "coral_core.editing.pruning": ["tests/unit/test_pruning_properties.py"],
    "coral_core.editing.run_record": ["tests/unit/test_checkpoint_resume.py"],
    "coral_core.editing.directions": ["tests/unit/test_directions.py"],
    "coral_core.editing.region": ["tests/unit/test_region_choice.py",
                                  "tests/unit/test_region_judge.py"],
    "coral_core.editing.selectors": ["tests/unit/test_selectors.py"],
    "coral_core.editing.fit": ["tests/unit/test_fit_rules.py"],
    "coral_core.editing.outcome": ["tests/unit/test_outcome.py"],
    "coral_core.editing.losses": ["tests/unit/test_loss_terms.py"],
    "coral_core.editing.objective": ["tests/unit/test_objective.py"],
    "coral_core.editing.catalogue": ["tests/unit/test_catalogue_pieces.py"],
    "coral_core.editing.memory": ["tests/unit/test_memory_and_views.py"],
    "coral_core.editing.visualize": ["tests/unit/test_memory_and_views.py"],
    "coral_core.editing.blend": ["tests/unit/test_blend.py", "tests/unit/test_behaviour.py"],
    "coral_core.editing.presets": ["tests/unit/test_presets.py"],
    "coral_core.editing.prior": ["tests/unit/test_prior.py"],
    "coral_core.editing.identity": ["tests/unit/test_identity_net.py"],
    "coral_core.editing.edit": ["tests/unit/test_edit_file.py"],
    "coral_core.editing.apply": ["tests/unit/test_apply_rules.py"],
    "coral_core.editing.trainer": ["tests/unit/test_trainer_runs.py"],
    "coral_core.editing.config": ["tests/unit/test_train_config.py", "tests/unit/test_presets.py"],
    "coral_core.formats.torchscript": ["tests/unit/test_torchscript_reader.py",
                                       "tests/unit/test_loaders.py", "tests/unit/test_clip.py",
                                       "tests/unit/test_hostile_files.py",
                                       "tests/unit/test_hostile_round3.py"],
    "coral_core.formats.nvlabs": ["tests/unit/test_loaders.py", "tests/unit/test_hostile_files.py",
                                  "tests/unit/test_hostile_round3.py",
                                  "tests/unit/test_nvlabs_records.py"],
    "coral_core.formats.rosinality": ["tests/unit/test_rosinality_export.py",
                                      "tests/unit/test_loader_edges.py",
                                      "tests/unit/test_loaders.py"],
    "coral_core.formats.loader": ["tests/unit/test_loader_edges.py",
                                  "tests/unit/test_loaders.py", "tests/unit/test_hostile_files.py",
                                  "tests/unit/test_hostile_round3.py",
                                  "tests/unit/test_corrupt_files.py"],
    "coral_core.formats.clip_checks": ["tests/unit/test_clip_checks.py",
                                       "tests/unit/test_fuzz_parsers.py",
                                       "tests/unit/test_hostile_round3.py",
                                       "tests/unit/test_clip.py"],
    "coral_core.formats.native": ["tests/unit/test_loaders.py", "tests/unit/test_corrupt_files.py",
                                  "tests/unit/test_native_format.py"],
    "coral_core.formats.weights": ["tests/unit/test_loaders.py",
                                   "tests/unit/test_corrupt_files.py",
                                   "tests/unit/test_weights_file.py"],
}
COPY_IGNORE = shutil.ignore_patterns(".venv", ".host", "out", "mutants", ".mutation", ".git",
                                     "__pycache__", "*.ckpt.pt", ".mypy_cache", ".pytest_cache")


EQUIVALENTS = ROOT / "scripts" / "mutation_equivalents.txt"


def expand(names: list[str]) -> list[str]:
    """Module names, a package's name standing for each of its modules (not __init__)."""
    out: list[str] = []
    for name in names:
        folder = ROOT / Path(*name.split("."))
        if (folder / "__init__.py").is_file():
            out += [f"{name}.{p.stem}" for p in sorted(folder.glob("*.py"))
                    if p.stem != "__init__"]
        else:
            out.append(name)
    return out


def equivalents() -> set[str]:
    """Mutant names judged equivalent: the first word of each line (after it, the reason)."""
    if not EQUIVALENTS.is_file():
        return set()
    return {line.split()[0] for line in EQUIVALENTS.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")}


def module_file(module: str) -> str:
    path = Path(*module.split(".")).with_suffix(".py")
    if not (ROOT / path).is_file():
        raise SystemExit(f"no such module file: {path}")
    return str(path)


def prepare(modules: list[str], tests: list[str], fresh: bool = False) -> Path:
    """The scoped copy: sources refreshed from the tree (mutmut compares them with its
    cache), pyproject.toml's [tool.mutmut] narrowed to ``modules`` and ``tests``. ``fresh``
    drops the cached results first: mutmut re-tests what changed in the code, not in the
    tests, so after new tests only a fresh run measures them."""
    work = scope_folder(modules, tests)
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for item in ROOT.iterdir():
        if item.name in {".venv", ".host", "out", "mutants", ".mutation", ".git"}:
            continue
        dest = work / item.name
        if item.is_dir():
            shutil.copytree(item, dest, ignore=COPY_IGNORE, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dest)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    config.update(only_mutate=[module_file(m) for m in modules],
                  pytest_add_cli_args_test_selection=tests)
    lines = ["[tool.mutmut]"] + [f"{k} = {_toml(v)}" for k, v in config.items()]
    text = (ROOT / "pyproject.toml").read_text()
    head = text.split("[tool.mutmut]")[0]
    (work / "pyproject.toml").write_text(head + "\n".join(lines) + "\n")
    (work / "README.txt").write_text(f"mutmut scope: {modules} with {tests}\n")
    return work


def scope_folder(modules: list[str], tests: list[str]) -> Path:
    """Where the scope of these modules and tests keeps its copy and mutmut's results."""
    key = hashlib.sha256("\n".join(sorted(modules) + ["--"] + sorted(tests)).encode())
    return SCRATCH / key.hexdigest()[:12]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", default=list(DEFAULT_MODULES))
    ap.add_argument("--tests", nargs="+", default=None,
                    help="test files to run (default: MODULE_TESTS of the modules)")
    ap.add_argument("--children", type=int, default=2, help="mutants tested at once")
    ap.add_argument("--fresh", action="store_true",
                    help="forget the cached results (after the module's tests changed)")
    ap.add_argument("--survivors", action="store_true",
                    help="after tests were added (none removed): re-test only the mutants that "
                         "survived the last run (mutmut keeps killed ones killed)")
    ap.add_argument("--sample", type=int, default=0,
                    help="test only this many of the module's mutants, drawn at random with "
                         "--seed (for a module whose tests take minutes per mutant); the score "
                         "is then an estimate, printed with its 95%% interval")
    ap.add_argument("--seed", type=int, default=0, help="the --sample draw's seed")
    ap.add_argument("--report-only", action="store_true",
                    help="print the last run's results of each scope without running mutmut")
    return ap


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    modules = expand(list(args.modules))
    status: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    where: dict[str, str] = {}  # module: its scope folder
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    if not Path(mutmut).is_file():
        raise SystemExit(f"mutmut is not installed next to {sys.executable}: run "
                         "`.venv/bin/python -m pip install -e '.[mutation]'` first")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for module in modules:  # one scope per module: each runs only its own tests
        tests = args.tests or MODULE_TESTS.get(module) or ["tests/unit"]
        if args.report_only:
            work = scope_folder([module], tests)
            if not work.is_dir():
                print(f"{module}: never run with {tests}", file=sys.stderr)
                continue
        else:
            names = _survivor_names(mutmut, scope_folder([module], tests), env) \
                if args.survivors else []
            work = prepare([module], tests, fresh=args.fresh)
            if args.sample:
                names = _sampled_names(mutmut, work, env, module, args.sample, args.seed)
            run = subprocess.run([mutmut, "run", "--max-children", str(args.children), *names],
                                 cwd=work, env=env)
            if run.returncode != 0:
                print(f"mutmut run failed for {module} ({run.returncode}) in {work}",
                      file=sys.stderr)
                return run.returncode
        where[module] = str(work.relative_to(ROOT))
        for name, state in _results(mutmut, work, env):
            if name.startswith(module + "."):
                status[module][state] += 1
                if state in ("survived", "no tests"):
                    survivors[module].append(name)
    report(modules, status, survivors, where)
    if args.sample:
        _interval(status)
    return 0


def _interval(status: dict[str, Counter]) -> None:
    """The sampled score's 95 % interval (normal approximation, killed / all)."""
    for module, c in status.items():
        killed, n = _tally(c)
        if n:
            p = killed / n
            half = 1.96 * (p * (1 - p) / n) ** 0.5
            print(f"{module}: a sample of {n} mutants: score {p:.2f} +- {half:.2f} (95 %)")


def _tally(c: Counter) -> tuple[int, int]:
    """(killed, tested) of one module's mutmut states: a timeout counts as killed, a mutant
    no selected test reaches as tested and surviving."""
    killed = c["killed"] + c["timeout"]
    return killed, killed + c["survived"] + c["no tests"]


def _survivor_names(mutmut: str, work: Path, env: dict[str, str]) -> list[str]:
    """The mutants that survived (or no test reached) in the scope's last run."""
    if not work.is_dir():
        raise SystemExit(f"--survivors: {work} has no earlier run")
    names = [name for name, state in _results(mutmut, work, env)
             if state in ("survived", "no tests")]
    if not names:
        raise SystemExit(f"--survivors: no survivors in {work}")
    return names


def _sampled_names(mutmut: str, work: Path, env: dict[str, str], module: str, count: int,
                   seed: int) -> list[str]:
    """``count`` of the module's mutants: the first function's first mutant (mutmut makes
    every mutant when it first runs one; that run makes them) and ``count - 1`` of the rest,
    drawn with ``seed``."""
    import ast
    import random

    tree = ast.parse((ROOT / module_file(module)).read_text())
    first = next(n.name for n in tree.body if isinstance(n, ast.FunctionDef))
    seed_mutant = f"{module}.x_{first}__mutmut_1"
    subprocess.run([mutmut, "run", "--max-children", "1", seed_mutant], cwd=work, env=env,
                   check=False)
    rest = sorted(n for n, _ in _results(mutmut, work, env)
                  if n.startswith(module + ".") and n != seed_mutant)
    return [seed_mutant] + sorted(random.Random(seed).sample(rest, min(count - 1, len(rest))))


def _results(mutmut: str, work: Path, env: dict[str, str]) -> list[tuple[str, str]]:
    """(mutant name, state) of every mutant the scope in ``work`` has made."""
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, env=env,
                         capture_output=True, text=True).stdout
    return [(name, state) for name, _, state in
            (line.strip().rpartition(": ") for line in out.splitlines()) if name]


def report(modules: list[str], status: dict[str, Counter], survivors: dict[str, list[str]],
           where: dict[str, str]) -> None:
    """Per module and pooled per package: killed / all, and killed / non-equivalent. A
    mutant no selected test reaches counts as surviving: nothing would catch that bug."""
    judged = equivalents()
    print(f"{'module':42} {'killed':>7} {'survived':>9} {'no test':>8} {'equiv':>6} "
          f"{'score':>6} {'non-eq':>7}")
    pooled: dict[str, Counter] = defaultdict(Counter)
    for module in modules:
        c = status[module]
        row = Counter(killed=_tally(c)[0], survived=c["survived"],
                      no_tests=c["no tests"],
                      equivalent=sum(1 for n in survivors[module] if n in judged))
        pooled[module.rpartition(".")[0]].update(row)
        _line(module, row)
    for package, row in pooled.items():
        if sum(1 for m in modules if m.rpartition(".")[0] == package) > 1:
            _line(f"{package} (pooled)", row)
    for module in modules:
        for name in survivors[module]:
            mark = "equivalent" if name in judged else "survived"
            print(f"  {mark}: {name}  (in {where[module]})")


def _line(label: str, row: Counter) -> None:
    tested = row["killed"] + row["survived"] + row["no_tests"]
    score = row["killed"] / tested if tested else float("nan")
    real = tested - row["equivalent"]
    non_eq = row["killed"] / real if real else float("nan")
    print(f"{label:42} {row['killed']:7d} {row['survived']:9d} {row['no_tests']:8d} "
          f"{row['equivalent']:6d} {score:6.2f} {non_eq:7.2f}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
