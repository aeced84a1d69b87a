"""``ssl-bench bench eval``: several protocols in one ``ssl-bench eval`` against one extraction.

Each repeat runs, in fresh processes and with a cold feature cache (a new results folder):

- **one extraction**: start-up, the checkpoint loaded, the train and val features of the first
  protocol's evaluation transform extracted once (the least any of these protocols can cost);
- **all protocols**: ``ssl-bench eval --protocol P1,P2,...`` (one process: checkpoint loaded
  once, each (split, transform) extracted once, shared by the protocols).

The two alternate (interleaved), so a change in machine load hits both alike; printed are the
medians and the ratio all protocols / one extraction.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..data import ImageFolderDataset, resolve
from ..errors import UserError
from ..evaluate import Evaluation, loader_workers, recipe_files, resolve_protocol_recipe, resolve_recipes
from ..progress import log, set_quiet
from ..protocols import EvalContext
from ..protocols._common import open_classification
from ..protocols._features import eval_transform, feature_spec, split_features
from ..threads import apply_threads, choose_threads, chosen
from . import require_images

DESCRIPTION = "several protocols in one eval process vs one feature extraction (fresh processes, cold cache)"

#: fewer training images than this would time start-up, not extraction
MIN_TRAIN_IMAGES = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="SPEC", help="checkpoint spec, as for eval")
    parser.add_argument("--protocols", default="knn,linear,lowshot", metavar="P[,P...]",
                        help="protocols run together (default knn,linear,lowshot)")
    parser.add_argument("--data", required=True, type=Path, help="dataset root or embedded data tree")
    parser.add_argument("--recipe-for", action="append", default=[], metavar="P=FILE",
                        help="the recipe of protocol P (repeatable; default: package defaults)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each side (median; default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")


def extract_once(protocol: str, recipe: Path | None, checkpoint: str, data: Path, results: Path,
                 device: str) -> int:
    """The baseline: load the checkpoint and extract the train and val features of ``protocol``'s
    evaluation transform once, as its evaluation would. Returns the number of training images."""
    resolved = resolve_protocol_recipe(protocol, recipe)
    session = Evaluation(checkpoint, data, results_dir=results, device=device)
    ctx = EvalContext(session.checkpoint, session.data, resolved, session.results_dir, session.device)
    spec = feature_spec(ctx.checkpoint, resolved)
    tcfg = resolved["transform"]
    splits = open_classification(ctx, resolved, eval_transform(tcfg, spec.input_filter))
    for name, dataset in (("train", splits.train), ("val", splits.val)):
        split_features(ctx, dataset, split=name, spec=spec, transform_cfg=tcfg, recipe=resolved)
    return len(splits.train)


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"bench eval: {' '.join(argv[:4])} ... failed (exit {done.returncode}): {last}")
    return seconds


def run(args: argparse.Namespace) -> int:
    protocols = [p for p in args.protocols.split(",") if p]
    recipes = recipe_files(protocols, args.recipe_for)
    for protocol, recipe in recipes.items():  # a bad name or recipe fails before any timing
        resolve_protocol_recipe(protocol, recipe)
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: must be at least 1")
    first = protocols[0]
    train = resolve(args.data, resolve_protocol_recipe(first, recipes[first]).get("dataset", "imagenet")) / "train"
    require_images(len(ImageFolderDataset(train)), MIN_TRAIN_IMAGES, train,
                   "on fewer the start-up dominates and the ratio says nothing about extraction; give a larger "
                   "dataset (e.g. ssl-bench data prepare --profile demo)")
    recipe_args = [f"--recipe-for={p}={f}" for p, f in recipes.items() if f is not None]
    threads = str(_threads(recipes))
    extract_recipe = str(recipes[first]) if recipes[first] else ""
    one, together = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            log(f"repeat {repeat + 1}/{args.repeats}: one extraction ...")
            one.append(_timed(["-m", __name__, first, extract_recipe, args.checkpoint, str(args.data),
                               f"{tmp}/one{repeat}", args.device, threads]))
            log(f"repeat {repeat + 1}/{args.repeats}: eval --protocol {','.join(protocols)} ...")
            together.append(_timed(["-m", "ssl_bench.cli", "--quiet", "--threads", threads, "eval", "--protocol",
                                    ",".join(protocols),
                                    "--checkpoint", args.checkpoint, "--data", str(args.data), *recipe_args,
                                    "--results", f"{tmp}/all{repeat}", "--device", args.device]))
    t_one, t_all = statistics.median(one), statistics.median(together)
    print(f"evaluation of {args.checkpoint} on {args.data}: fresh processes, cold feature cache, "
          f"median of {args.repeats} interleaved runs, {threads} torch thread(s) in both")
    print(f"one extraction process\t{t_one:.1f} s\t(start-up, checkpoint, {first}'s train + val features)")
    print(f"eval --protocol {','.join(protocols)}\t{t_all:.1f} s\t(one process)")
    print(f"ratio\t{t_all / t_one:.2f}\t(all protocols / one extraction)")
    return 0


def _threads(recipes: dict[str, Path | None]) -> int:
    """The thread count ``ssl-bench eval`` of these protocols starts with (``--threads`` or
    OMP_NUM_THREADS given to the bench win), given to both timed processes alike."""
    parent = chosen()
    requested = parent.count if parent is not None and parent.source != "default" else None
    return choose_threads(requested, loader_workers(resolve_recipes(recipes))).count


if __name__ == "__main__":  # the baseline's process: PROTOCOL RECIPE|'' CHECKPOINT DATA RESULTS DEVICE THREADS
    protocol, recipe, checkpoint, data, results, device, threads = sys.argv[1:8]
    apply_threads(choose_threads(int(threads)))
    set_quiet(True)
    extract_once(protocol, Path(recipe) if recipe else None, checkpoint, Path(data), Path(results), device)
