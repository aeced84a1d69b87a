"""``ssl-bench sweep``: every checkpoint with every protocol, one job per checkpoint.

A pair whose (checkpoint hash, protocol, resolved recipe) is already in the results store is
reused, by the rule ``make demo`` follows (``results.evaluation_key``). Each checkpoint with pairs
left becomes one ``jobs.SweepJob`` running those protocols in one process, as ``ssl-bench eval
--protocol p1,p2,...`` does: the checkpoint is loaded once and each (split, transform) extracted
once. The jobs run as one Slurm job array (one task per checkpoint) or as processes of submitit's
local executor, at most ``--max-parallel`` at a time. A failing protocol stops neither the other
protocols of its job nor the other jobs; failures are listed at the end per (checkpoint, protocol)
with their logs, and the sweep ends with the leaderboard of its checkpoints and protocols.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoints import load_spec
from .errors import NotApplicable, UserError
from .evaluate import recipe_files, resolve_recipes
from .jobs import SweepJob
from .launch import LaunchOptions, outcome, run_jobs
from .leaderboard import build_table
from .progress import log, progress
from .results import evaluation_key, load_results, stored_keys

NOT_APPLICABLE = f"{NotApplicable.__module__}.{NotApplicable.__qualname__}:"  # its exception line


class Plan:
    """The sweep's pairs: each checkpoint's hash, each protocol's resolved recipe, the store."""

    def __init__(self, checkpoints: list[str], recipes: dict[str, Path | None], results_dir: Path):
        self.recipes = recipes
        self.resolved = resolve_recipes(recipes)
        self.hashes = {spec: load_spec(spec).sha256 for spec in dict.fromkeys(checkpoints)}
        self.results_dir = results_dir

    def key(self, spec: str, protocol: str) -> str:
        return evaluation_key(self.hashes[spec], protocol, self.resolved[protocol])

    def jobs(self, data: Path, device: str, threads: int | None = None) -> list[SweepJob]:
        """One job per checkpoint with pairs not in the store, holding only those protocols
        (``threads``: the ``--threads`` each job starts with; None: chosen in the job)."""
        stored = stored_keys(self.results_dir)
        jobs = []
        for spec in self.hashes:
            left = {protocol: recipe for protocol, recipe in self.recipes.items()
                    if self.key(spec, protocol) not in stored}
            if left:
                jobs.append(SweepJob(left, spec, data, results_dir=self.results_dir, device=device,
                                     threads=threads))
        return jobs

    def outcomes(self, call: SweepJob, job) -> dict[str, str | None]:
        """{protocol: None (stored) or why it failed} for each protocol of ``call``, once its job
        ended. A job that died as a whole (killed, out of time, checkpoint unreadable) fails the
        protocols it had not stored yet, with the job's reason."""
        result, failure = outcome(job)
        if failure is None:
            return result
        stored = stored_keys(self.results_dir)
        return {protocol: None if self.key(call.spec, protocol) in stored else failure for protocol in call.recipes}


def sweep(checkpoints: list[str], protocols: list[str], data: Path, *, recipe_for=(),
          results_dir: Path = Path("results"), device: str = "auto",
          options: LaunchOptions | None = None, threads: int | None = None) -> int:
    """Run the sweep; 0 when every pair is stored (or does not apply), 1 when a pair failed."""
    options = options or LaunchOptions()
    if not Path(data).exists():
        raise UserError(f"--data {data}: no such folder; give a dataset root or a tree made by "
                        "'ssl-bench data prepare'")
    plan = Plan(checkpoints, recipe_files(protocols, list(recipe_for)), Path(results_dir))
    jobs = plan.jobs(Path(data), device, threads)
    total = len(plan.hashes) * len(plan.recipes)
    left = sum(len(job.recipes) for job in jobs)
    if not jobs:
        log(f"all {total} evaluations were already stored: reused, nothing to run")
    else:
        log(f"{total - left} of {total} evaluations already stored (reused); {left} to run in "
            f"{len(jobs)} job{'s' * (len(jobs) != 1)}, one per checkpoint")
    failures, not_applicable = [], []
    bar = progress(total=left, desc="sweep", unit="evaluation")

    def finished(call: SweepJob, job) -> None:
        for protocol, failure in plan.outcomes(call, job).items():
            pair = f"{protocol} on {call.spec}"
            if failure is None:
                log(f"done: {pair}")
            elif failure.startswith(NOT_APPLICABLE):
                not_applicable.append(f"{pair}: {failure.removeprefix(NOT_APPLICABLE).strip()}")
            else:
                failures.append(f"{pair}: {failure} (log: {job.paths.stderr})")
                log(f"failed: {pair}")
        bar.update(len(call.recipes))

    if jobs:
        run_jobs(jobs, options, Path(results_dir) / "jobs", "ssl-bench-sweep", finished)
    bar.close()
    _print_leaderboard(Path(results_dir), set(plan.hashes.values()), set(plan.recipes))
    for line in not_applicable:
        log(f"not applicable: {line}")
    for line in failures:
        log(f"FAILED {line}")
    return 1 if failures else 0


def _print_leaderboard(results_dir: Path, hashes: set[str], protocols: set[str]) -> None:
    records = load_results(results_dir)
    records = records[records["checkpoint_sha256"].isin(hashes) & records["protocol"].isin(protocols)]
    if records.empty:
        log("no results stored for this sweep")
        return
    print(build_table(records).render("md"))
