"""Benchmark (not a test): the default killed at seeded random moments of every rule, then rerun until done (issue 44).

A fault-injection run in the manner of SQLite's crash tests: the workflow is started in a copy of the repository's
workflow from an empty ``results/``; at a seeded random moment inside a chosen rule the whole Snakemake process
group is killed with SIGKILL (Snakemake, its jobs, and through its guard the vLLM server, which runs in its own
session: :mod:`logivote.serving.guard`); or only one process: a training job, the vLLM server, or Snakemake given
Ctrl-C (:class:`Target`'s ``how``); the next run (``snakemake --unlock``, then ``snakemake --cores 2 --rerun-incomplete``, as a user
would) is killed in the next rule, and so on through the DAG; the last run goes to the end. Each *campaign* does
that once, from an empty ``results/``, through :data:`TARGETS` in data-flow order. Afterwards every final file
(``submission.jsonl``, ``metrics.json``, the votes, every adapter's files, every prediction) must be byte-identical
to an undisturbed run's, and no process of a killed run may be left.

A target is a rule and a moment: the rule's job start in Snakemake's output (``rule X:``/``localrule X:``), or a
line of the rule's own log (the predict phase's server start, its asking), then a uniform random delay of up to the
target's span. A target that the run passes before the killer sees it is reported as missed, not hidden.

    python -m logivote.bench.faults --work /tmp/faults --campaigns 2 --seed 1 --out faults.jsonl
        [--reference DIR]  (an undisturbed run's workflow folder; without it one is made first)
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from logivote.bench import report
from logivote.serving.guard import processes

REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Target:
    """Where to kill: ``rule``'s job start in Snakemake's output (``log`` None) or the first line matching ``pattern``
    in the rule's log ``log`` (relative to the workflow folder), then after up to ``span_s`` seconds (uniform).

    What is killed (``how``): ``tree``, Snakemake's whole process group with SIGKILL; ``job``, only the rule's own
    process (SIGKILL); ``server``, only the vLLM server process (SIGKILL); ``sigint``, Ctrl-C: SIGINT to Snakemake's
    process group, as a terminal sends it."""

    name: str
    rule: str
    span_s: float
    log: str | None = None
    pattern: str | None = None
    how: str = "tree"


# Every rule of the default, in data-flow order; the predict phase at its server starting and its client asking; the
# single-process kills (a training job, the vLLM server, Ctrl-C) among them. Spans stay within what the rule takes on
# a 2-core machine (a kill after the rule's end is reported as such, not counted as a hit).
TARGETS = (
    Target("flatten", "flatten", 0.1),
    Target("dev_split", "dev_split", 0.1),
    Target("subset", "subset", 0.1),
    Target("base_model", "base_model", 25),
    Target("train_lora: job killed", "train_lora", 30, how="job"),
    Target("train_lora", "train_lora", 60),
    Target("link_adapter", "link_adapter", 0.1),
    Target("loss_curves", "loss_curves", 1),
    Target("predict: server starting", "predict", 15, "logs/predict/0.log", r"started vLLM server pid"),
    Target("predict: client asking", "predict", 15, "logs/predict/0.log", r"requests: \d+ cached, \d+ to ask"),
    Target("predict: vLLM server killed", "predict", 10, "logs/predict/0.log", r"requests: \d+ cached, \d+ to ask", how="server"),
    Target("predict: Ctrl-C", "predict", 10, "logs/predict/0.log", r"requests: \d+ cached, \d+ to ask", how="sigint"),
    Target("link_prediction", "link_prediction", 0.1),
    Target("serving_record", "serving_record", 0.1),
    Target("vote", "vote", 0.1),
    Target("revote", "revote", 3),
    Target("submission", "submission", 0.1),
    Target("evaluate", "evaluate", 1),
    Target("plots", "plots", 0.5),
)

# What an undisturbed run and a killed-and-rerun one must have byte for byte (relative to results/)
FINAL_GLOBS = ("submission.jsonl", "eval/metrics.json", "eval/adapters.tsv", "eval/vote_size.tsv", "eval/dev_round2.jsonl",
               "votes/*.jsonl", "predictions/*", "adapters/*/*", "eval/oob/*", "eval/dev/*")


WORKFLOW_FOLDERS = ("workflow", "config", "resources", "envs")


def copy_workflow(dest: Path, folders: Sequence[str] = WORKFLOW_FOLDERS) -> Path:
    """The tracked workflow, configs, sample data and envs (or ``folders`` of the repository), without results/."""
    for name in folders:
        shutil.copytree(REPO / name, dest / name)
    return dest


def descendants(pid: int) -> set[int]:
    """``pid`` and every live process below it (by parent pid, so processes in other sessions count too)."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in processes().items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo += children.get(p, [])
    return found


def alive(pids: set[int]) -> set[int]:
    return pids & processes().keys()


def cmdlines(pids: set[int]) -> dict[int, str]:
    found = {}
    for pid in pids:
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def rule_processes(tree: set[int], rule: str) -> list[int]:
    """The Python processes of ``tree`` running ``rule``'s script (``python .snakemake/scripts/tmpXXXX.<rule>.py``), not
    a shell around one."""
    return sorted(pid for pid, cmd in cmdlines(tree).items() if f".{rule}.py" in cmd and "python" in cmd.split(" ", 1)[0])


def server_processes(tree: set[int]) -> list[int]:
    """The vLLM servers of ``tree``: each guard's child (not the guard; not the engine and worker processes the
    server starts, which under ``fork`` have its command line too)."""
    commands = cmdlines(tree)
    guards = {pid for pid, cmd in commands.items() if "logivote.serving.guard" in cmd}
    return sorted(pid for pid, (parent, _) in processes().items() if pid in commands and parent in guards)


def snakemake(workdir: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=workdir, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _mark(path: Path) -> tuple[int, int]:
    """Where ``path`` stands now: its inode and size ((0, 0) if there is none)."""
    return (path.stat().st_ino, path.stat().st_size) if path.exists() else (0, 0)


def _since(path: Path, offsets: dict[str, tuple[int, int]]) -> str:
    """What ``path`` gained since this run started (all of it if it was made anew, as a rerun job's log is)."""
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        inode, size = offsets.get(str(path), (0, 0))
        if os.fstat(handle.fileno()).st_ino == inode and os.fstat(handle.fileno()).st_size >= size:
            handle.seek(size)
        return handle.read().decode(errors="replace")


def job_running(snakemake_output: str, rule: str) -> bool:
    """Whether a job of ``rule`` has started and not finished, by Snakemake's output (``rule X:`` ... ``jobid: N``,
    then ``Finished jobid: N``)."""
    started = re.findall(rf"^(?:local)?rule {rule}:\n(?:\s+.*\n)*?\s+jobid: (\d+)", snakemake_output, re.M)
    finished = set(re.findall(r"^Finished jobid: (\d+)", snakemake_output, re.M))
    return any(job not in finished for job in started)


def _found(workdir: Path, target: Target, run_log: Path, offsets: dict[str, tuple[int, int]]) -> bool:
    """Whether ``target``'s moment has come in this run (only text written since the run started counts)."""
    text = _since(run_log if target.log is None else workdir / target.log, offsets)
    pattern = rf"^(local)?rule {target.rule}:" if target.log is None else target.pattern or ""
    return re.search(pattern, text, re.M) is not None


def run_and_kill(workdir: Path, targets: Sequence[Target], rng: random.Random, run_log: Path,
                 after: Callable[[dict[str, Any], str], None] | None = None) -> dict[str, Any]:
    """One run, killed with SIGKILL at the first of ``targets`` whose moment comes (the DAG's order decides which),
    or to the end (no target, or none came). What happened, with its times. ``after``: called with that record and
    the run's Snakemake output once the run has ended (a test looks at the folder between runs)."""
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=workdir, capture_output=True, check=False)
    logs = [run_log] + [workdir / t.log for t in targets if t.log]
    offsets = {str(p): _mark(p) for p in logs}
    started, began = time.monotonic(), time.time()
    proc = snakemake(workdir, run_log, "--rerun-incomplete")
    record: dict[str, Any] = {"target": None}
    while targets and proc.poll() is None:
        target = next((t for t in targets if _found(workdir, t, run_log, offsets)), None)
        if target is not None:
            record["target"] = target.name
            delay = rng.uniform(0, target.span_s)
            time.sleep(delay)
            tree = descendants(proc.pid)
            if proc.poll() is not None:
                break
            in_rule = job_running(_since(run_log, offsets), target.rule)
            if target.how in ("job", "server"):
                victims = rule_processes(tree, target.rule) if target.how == "job" else server_processes(tree)
                in_rule = in_rule and bool(victims)
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
                if not victims:  # the rule's process or its server has ended: kill the tree, not counted as a hit
                    os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.killpg(proc.pid, signal.SIGINT if target.how == "sigint" else signal.SIGKILL)
            killed_at = time.monotonic() - started
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            deadline = time.monotonic() + 30  # a killed rule's vLLM server goes within its guard's grace
            while alive(tree) and time.monotonic() < deadline:
                time.sleep(0.2)
            record.update(killed=True, in_rule=in_rule, delay_s=round(delay, 2), at_s=round(killed_at, 1),
                          processes_in_tree=len(tree), left_alive=sorted(alive(tree)))
            break
        time.sleep(0.05)
    rc = proc.wait()
    record.setdefault("killed", False)
    record.update(rc=rc, wall_s=round(time.monotonic() - started, 1), asked=asked_since(workdir, began))
    if after is not None:
        after(record, _since(run_log, offsets))
    return record


def asked_since(workdir: Path, since: float) -> int:
    """Requests the serving rules set out to ask (``N to ask`` in their logs) in logs written since ``since`` (epoch s)."""
    total = 0
    for log in [*(workdir / "logs" / "predict").glob("*.log"), workdir / "logs" / "revote.log"]:
        if log.exists() and log.stat().st_mtime >= since:
            total += sum(int(n) for n in re.findall(r"requests: \d+ cached, (\d+) to ask", log.read_text(errors="replace")))
    return total


def campaign(workdir: Path, targets: Sequence[Target], rng: random.Random, run_log: Path,
             after: Callable[[dict[str, Any], str], None] | None = None) -> list[dict[str, Any]]:
    """Runs from an empty ``results/``, each killed at the first target still to hit whose moment comes, until one
    runs to the end; one record per run (``after``: :func:`run_and_kill`'s)."""
    runs: list[dict[str, Any]] = []
    left = list(targets)
    while not runs or runs[-1]["killed"]:
        runs.append(run_and_kill(workdir, left, rng, run_log, after))
        print(f"  {runs[-1]}", flush=True)
        left = [t for t in left if t.name != runs[-1]["target"]]
        if not runs[-1]["killed"] and runs[-1]["rc"] != 0:
            raise RuntimeError(f"a rerun failed without a kill: {run_log}")
    return runs


def final_files(results: Path) -> dict[str, bytes]:
    return {str(p.relative_to(results)): p.read_bytes() for pattern in FINAL_GLOBS for p in sorted(results.glob(pattern)) if p.is_file()}


def differences(got: dict[str, bytes], want: dict[str, bytes]) -> list[str]:
    """The final files (:func:`final_files`) that differ from, or are missing against, an undisturbed run's."""
    return sorted(name for name in set(got) | set(want) if got.get(name) != want.get(name))


def main(argv: list[str] | None = None) -> None:
    from logivote.bench.cold_run import cpu

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", required=True)
    ap.add_argument("--campaigns", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reference", type=Path, help="an undisturbed run's workflow folder (its results/ complete)")
    ap.add_argument("--targets", nargs="*", help="target names (default: all, in data-flow order)")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    targets = [t for t in TARGETS if not args.targets or t.name in args.targets]
    rng = random.Random(args.seed)
    reference = args.reference
    reference_s = reference_asked = None
    if reference is None:
        reference = copy_workflow(args.work / "reference")
        undisturbed = run_and_kill(reference, [], rng, args.work / "reference.log")
        assert undisturbed["rc"] == 0, f"the undisturbed run failed: {args.work / 'reference.log'}"
        reference_s, reference_asked = undisturbed["wall_s"], undisturbed["asked"]
    want = final_files(reference / "results")
    runs: list[dict[str, Any]] = []
    for n in range(args.campaigns):
        workdir = copy_workflow(args.work / f"campaign-{n}")
        print(f"campaign {n}: {workdir}", flush=True)
        these = campaign(workdir, targets, rng, args.work / f"campaign-{n}.log")
        diff = differences(final_files(workdir / "results"), want)
        runs += [{"campaign": n, **r} for r in these]
        runs[-1].update(differing_files=diff, files_compared=len(want))
    kills = [r for r in runs if r["killed"]]
    result = {
        "bench": "faults", "seed": args.seed, "campaigns": args.campaigns, **cpu(),
        "kills": len(kills), "kills_inside_their_rule": sum(r["in_rule"] for r in kills),
        "targets_hit": sorted({r["target"] for r in kills if r["in_rule"]}),
        "targets_missed": sorted({t.name for t in targets} - {r["target"] for r in kills if r["in_rule"]}),
        "left_alive_after_a_kill": sum(len(r["left_alive"]) for r in kills),
        "all_final_files_identical": all(not r.get("differing_files") for r in runs),
        "differing_files": sorted({f for r in runs for f in r.get("differing_files", [])}),
        "asked_per_campaign": [sum(r["asked"] for r in runs if r["campaign"] == n) for n in range(args.campaigns)],
        "asked_undisturbed": reference_asked,
        "campaign_wall_s": [round(sum(r["wall_s"] for r in runs if r["campaign"] == n), 1) for n in range(args.campaigns)],
        "undisturbed_wall_s": reference_s,
        "targets": [asdict(t) for t in targets],
        "runs": runs,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
