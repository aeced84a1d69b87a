"""``ssl-bench sweep``: every checkpoint with every protocol, one job per (checkpoint, protocol).

A pair whose (checkpoint hash, protocol, resolved recipe) is already in the results store is
reused, by the rule ``make demo`` follows (``results.evaluation_key``). The others run as
``jobs.EvalJob``s: one Slurm job array, or processes of submitit's local executor, at most
``--max-parallel`` at a time. A failing job does not stop the others; failures are listed at the
end with their logs, and the sweep ends with the leaderboard of its checkpoints and protocols.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoints import load_spec
from .errors import NotApplicable, UserError
from .evaluate import recipe_files, resolve_protocol_recipe
from .jobs import EvalJob
from .launch import LaunchOptions, outcome, run_jobs
from .leaderboard import build_table
from .progress import log, progress
from .results import evaluation_key, load_results, stored_keys

NOT_APPLICABLE = f"{NotApplicable.__module__}.{NotApplicable.__qualname__}:"  # its traceback line


def plan(checkpoints: list[str], recipes: dict[str, Path | None], data: Path, results_dir: Path,
         device: str) -> tuple[list[EvalJob], dict[str, str]]:
    """The jobs still to run (pairs not in the store) and each checkpoint's hash."""
    resolved = {protocol: resolve_protocol_recipe(protocol, recipe) for protocol, recipe in recipes.items()}
    hashes = {spec: load_spec(spec).sha256 for spec in dict.fromkeys(checkpoints)}
    stored = stored_keys(results_dir)
    jobs = [EvalJob({protocol: recipe}, spec, data, results_dir=results_dir, device=device)
            for spec in hashes for protocol, recipe in recipes.items()
            if evaluation_key(hashes[spec], protocol, resolved[protocol]) not in stored]
    return jobs, hashes


def sweep(checkpoints: list[str], protocols: list[str], data: Path, *, recipe_for=(),
          results_dir: Path = Path("results"), device: str = "auto",
          options: LaunchOptions | None = None) -> int:
    """Run the sweep; 0 when every pair is stored (or does not apply), 1 when a job failed."""
    options = options or LaunchOptions()
    if not Path(data).exists():
        raise UserError(f"--data {data}: no such folder; give a dataset root or a tree made by "
                        "'ssl-bench data prepare'")
    recipes = recipe_files(protocols, list(recipe_for))
    jobs, hashes = plan(checkpoints, recipes, Path(data), Path(results_dir), device)
    total = len(hashes) * len(recipes)
    if not jobs:
        log(f"all {total} evaluations were already stored: reused, nothing to run")
    else:
        log(f"{total - len(jobs)} of {total} evaluations already stored (reused); {len(jobs)} to run")
    failures, not_applicable = [], []
    bar = progress(total=len(jobs), desc="sweep", unit="job")

    def finished(job_call: EvalJob, job) -> None:
        _, failure = outcome(job)
        if failure is None:
            log(f"done: {job_call}")
        elif failure.startswith(NOT_APPLICABLE):
            not_applicable.append(f"{job_call}: {failure.removeprefix(NOT_APPLICABLE).strip()}")
        else:
            failures.append(f"{job_call}: {failure} (log: {job.paths.stderr})")
            log(f"failed: {job_call}")
        bar.update(1)

    if jobs:
        run_jobs(jobs, options, Path(results_dir) / "jobs", "ssl-bench-sweep", finished)
    bar.close()
    _print_leaderboard(Path(results_dir), set(hashes.values()), set(recipes))
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
