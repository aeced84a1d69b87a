"""The ``ssl-bench`` command line: one table of commands, each with its arguments and its runner.

A command adds its arguments to the parser only when it is the one named, and its runner imports
what it runs only when called; this module imports nothing heavy itself. So ``ssl-bench
--version`` loads no torch, and ``ssl-bench eval`` loads the evaluation and the one protocol it
runs, not the data generator, the exporter or the leaderboard (``ssl-bench bench startup``
measures it). The imports inside the functions below are that mechanism, and the one place in
the package where its own modules are imported lazily.

Multi-process pretraining or fine-tuning: ``torchrun --nproc_per_node N -m ssl_bench.cli COMMAND ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import UserError, one_line
from .launch import LaunchOptions, add_launcher_arguments, launch
from .progress import end_bars, set_quiet

SET_HELP = "override a recipe key, e.g. --set optim.lr=0.001 (repeatable)"
DEVICE_HELP = "auto (CUDA if available), cpu or cuda[:N]"
THREADS_HELP = ("threads torch computes with (default: the cores this process may use, divided among the "
                "local ranks under torchrun, minus the command's data-loader workers; OMP_NUM_THREADS if set)")
CHECKPOINT_HELP = ("a checkpoint folder/file of ours (ssl-bench import writes one from a foreign file), "
                   "random:ARCH, timm:NAME or foreign:ARCH:PATH (strict import, layout recognised)")


@dataclass(frozen=True)
class Command:
    """One ``ssl-bench NAME``: its one-line help, a function adding its arguments to its parser
    (given the rest of the command line), the runner ``run(args) -> exit code`` (None for a
    group of sub-commands, whose parsers set their own) and, where the command knows it at start,
    ``loader_workers(args)``: the data-loader worker processes it will start (its thread count
    leaves their cores free; results and checkpoints record the count, ``provenance.run_machine``)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser, list[str]], None]
    run: Callable[[argparse.Namespace], int] | None
    loader_workers: Callable[[argparse.Namespace], int] | None = None


def _named(argv: list[str], names) -> str | None:
    """The first word of ``argv`` that is neither an option nor the value of ``--threads``, if it
    is one of ``names``."""
    words = iter(argv)
    for word in words:
        if word == "--threads":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in names else None
    return None


# ----- pretrain ------------------------------------------------------------------------------------
def _pretrain_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    p.add_argument("--recipe", type=Path, required=True, help="recipe YAML, e.g. pretrain/msn_tiny.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds a run)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_launcher_arguments(p)


def _pretrain_workers(args: argparse.Namespace) -> int:
    from .engine import resolve_recipe

    return int(resolve_recipe(args.recipe, args.set)["data"]["num_workers"])


def _pretrain(args: argparse.Namespace) -> int:
    if args.launcher != "local":
        from .engine import resolve_recipe
        from .jobs import PretrainJob  # imports submitit

        resolve_recipe(args.recipe, args.set)  # a bad recipe fails here, not after the queue
        job = PretrainJob(args.recipe, args.out, args.set, args.device, threads=args.threads)
        return launch(job, LaunchOptions.from_args(args), args.out / "jobs", "ssl-bench-pretrain", print)
    from .engine import pretrain

    print(pretrain(args.recipe, args.set, args.out, device=args.device))
    return 0


# ----- eval ----------------------------------------------------------------------------------------
def _eval_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    p.add_argument("--protocol", required=True, metavar="P[,P...]",
                   help="protocol name, e.g. knn, or several, e.g. knn,linear,lowshot: one process loads the "
                        "checkpoint once and extracts each (split, transform) once for all of them")
    p.add_argument("--checkpoint", required=True, metavar="SPEC", help=CHECKPOINT_HELP)
    p.add_argument("--data", type=Path, required=True, help="dataset root or embedded data tree")
    p.add_argument("--recipe", type=Path, help="protocol recipe YAML, one protocol only (default: package defaults)")
    p.add_argument("--recipe-for", action="append", default=[], metavar="P=FILE",
                   help="the recipe of protocol P (repeatable; default: package defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=SET_HELP + "; applies to every protocol named")
    p.add_argument("--results", type=Path, default=Path("results"), help="results store folder")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object per protocol, last")
    add_launcher_arguments(p)


def _eval_recipes(args: argparse.Namespace) -> dict[str, Path | None]:
    from .evaluate import recipe_files

    protocols = [name for name in args.protocol.split(",") if name]
    if not protocols or len(set(protocols)) != len(protocols):
        raise UserError(f"--protocol {args.protocol}: expected distinct protocol names separated by commas")
    recipes = recipe_files(protocols, args.recipe_for)
    if args.recipe is not None:
        if len(protocols) > 1:
            raise UserError("--recipe: one recipe for several protocols is ambiguous; give --recipe-for P=FILE "
                            "for each")
        recipes[protocols[0]] = args.recipe
    return recipes


def _eval_workers(args: argparse.Namespace) -> int:
    """The most loader workers any of the protocols starts (they run one after the other)."""
    from .evaluate import loader_workers, resolve_recipes

    return loader_workers(resolve_recipes(_eval_recipes(args), args.set))


def _eval(args: argparse.Namespace) -> int:
    recipes = _eval_recipes(args)
    if args.launcher != "local":
        from .evaluate import resolve_recipes
        from .jobs import EvalJob  # imports submitit

        resolve_recipes(recipes, args.set)  # a bad recipe fails here, not after the queue
        job = EvalJob(recipes, args.checkpoint, args.data, args.set, args.results, args.device, threads=args.threads)
        return launch(job, LaunchOptions.from_args(args), args.results / "jobs",
                      f"ssl-bench-eval-{'-'.join(recipes)}", lambda result: _print_evaluations(args, result))
    from .evaluate import evaluate_many

    _print_evaluations(args, evaluate_many(recipes, args.checkpoint, args.data, sets=args.set,
                                           results_dir=args.results, device=args.device))
    return 0


def _print_evaluations(args: argparse.Namespace, results: dict[str, tuple[list[dict], Path | None]]) -> None:
    for protocol, (records, path) in results.items():
        for record in records:
            print(f"{protocol}\t{record['dataset']}\t{record['metric']}\t{record['value']:.4f}")
        print(f"stored: {path}", file=sys.stderr)
    if args.json:
        for protocol, (records, path) in results.items():
            metrics = {f"{r['dataset']}/{r['metric']}": r["value"] for r in records}
            print(json.dumps({"protocol": protocol, "checkpoint": args.checkpoint,
                              "results_file": str(path), "metrics": metrics}))


# ----- sweep ---------------------------------------------------------------------------------------
def _sweep_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    p.add_argument("--checkpoints", nargs="+", required=True, metavar="SPEC", help="checkpoint specs, as for eval")
    p.add_argument("--protocols", nargs="+", required=True, metavar="P", help="protocol names")
    p.add_argument("--recipe-for", action="append", default=[], metavar="P=FILE",
                   help="the recipe of protocol P (repeatable; default: package defaults)")
    p.add_argument("--data", type=Path, required=True, help="dataset root or embedded data tree")
    p.add_argument("--results", type=Path, default=Path("results"), help="results store folder")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--max-parallel", type=int, metavar="N",
                   help="jobs (checkpoints) running at once (local default 1; slurm default: submitit's "
                        "array limit, 256)")
    add_launcher_arguments(p, sweep=True)


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep  # imports submitit

    return sweep(args.checkpoints, args.protocols, args.data, recipe_for=args.recipe_for,
                 results_dir=args.results, device=args.device, options=LaunchOptions.from_args(args),
                 threads=args.threads)


# ----- leaderboard ---------------------------------------------------------------------------------
DEFAULT_RESULTS = Path("results")
COMMITTED_LEADERBOARD = Path("leaderboards/embedded.csv")


def _leaderboard_source(results: Path | None) -> Path:
    """--results, else ./results when it exists, else the committed demo leaderboard's long form."""
    if results is not None:
        return results
    if DEFAULT_RESULTS.is_dir() or not COMMITTED_LEADERBOARD.is_file():
        return DEFAULT_RESULTS
    print(f"ssl-bench: no {DEFAULT_RESULTS}/ here: reading the committed demo leaderboard {COMMITTED_LEADERBOARD}",
          file=sys.stderr)
    return COMMITTED_LEADERBOARD


def _leaderboard_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    p.add_argument("--results", type=Path, default=None,
                   help="results store folder, or a leaderboard's long-form CSV (--format csv); default: "
                        f"{DEFAULT_RESULTS}/, else the committed demo leaderboard {COMMITTED_LEADERBOARD}")
    p.add_argument("--paper", metavar="NAME",
                   help="a seed paper's main table (siameseim, mscn, msn, conmim, mmc): its rows and columns, "
                        "the reported value, ours, the difference (md or csv)")
    p.add_argument("--format", default="md",
                   help="md, csv (long form), tex, html (page with figures), png (figures: OUT.png "
                        "overview + OUT.<protocol>.png) or all (every format; --out is a stem)")
    p.add_argument("--out", type=Path, help="output file (default: stdout; required for png and all)")
    p.add_argument("--reported", nargs="?", const=True, default=None, metavar="CSV",
                   help="add the papers' published numbers as rows marked (reported in PAPER); "
                        "default: the numbers ssl-bench ships (its reported.csv)")
    p.add_argument("--all-reported", action="store_true",
                   help="with --reported: every reported row, not only the measured protocols'")
    p.add_argument("--baseline", metavar="ROW",
                   help="add 'Improve w.r.t. ROW' rows (a row label, checkpoint label or method)")
    p.add_argument("--target", action="append", default=[], metavar="ROW",
                   help="rows compared with --baseline (repeatable; default: every measured row)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples for confidence intervals (default 1000; 0: none)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--digits", type=int, default=1, help="decimals shown (default 1)")
    p.add_argument("--title", default="ssl-bench leaderboard", help="page and figure title")
    p.add_argument("--strict", action="store_true",
                   help="refuse (exit 2) a results store with an unusable result file instead of skipping it "
                        "with a warning")


def _leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import FORMATS, build_table, is_text, measured_from_csv, write
    from .results import load_results

    formats = list(FORMATS) if args.format == "all" else [args.format]
    if args.format != "all" and args.format not in FORMATS:
        raise UserError(f"--format {args.format}: unknown format; valid: {', '.join(FORMATS)}, all")
    if args.out is None and not is_text(args.format):
        raise UserError(f"--format {args.format} writes files: give --out (a file, or a stem for 'all')")
    source = _leaderboard_source(args.results)
    if source.suffix == ".csv":
        records, measured, note = None, measured_from_csv(source), [
            f"Measured: read from the leaderboard {source} (its statistics as computed when it was written)."]
    elif source.is_dir():
        records, measured, note = load_results(source, strict=args.strict), None, []
    else:
        raise UserError(f"--results {source}: no such folder; run 'ssl-bench eval' first, or point --results "
                        "at a results store or a leaderboard CSV")
    if args.paper is not None:
        from .leaderboard.papers import paper_table

        cells = measured if measured is not None else build_table(
            records, n_boot=args.bootstrap, confidence=args.confidence, seed=args.seed).cells
        write(paper_table(args.paper, cells, digits=args.digits).render(args.format), args.out)
        return 0
    table = build_table(records, measured=measured, reported=args.reported, baseline=args.baseline,
                        targets=args.target or None, n_boot=args.bootstrap, confidence=args.confidence,
                        seed=args.seed, digits=args.digits, title=args.title,
                        reported_scope="all" if args.all_reported else "measured", provenance=note)
    if is_text(args.format):
        write(table.render(args.format), args.out)
        return 0
    stem = args.out if args.format == "all" else args.out.with_suffix("")
    for paths in table.write(stem, formats).values():
        for path in paths:
            print(path)
    return 0


# ----- data ----------------------------------------------------------------------------------------
#: ``data check`` prints at most this many problems per format, then a count of the rest.
MAX_PRINTED = 200


def _data_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from .data.common import profile_names
    from .data.resolve import FORMATS

    p.description = "Prepare the embedded benchmark data, or validate a dataset on disk."
    sub = p.add_subparsers(dest="data_command", metavar="{prepare,check}", required=True)
    pp = sub.add_parser("prepare", help="generate the embedded data (every format) under --root",
                        description="Generate the embedded benchmark data: real Fashion-MNIST objects on real "
                                    "skimage.data photos, written in the ImageNet, COCO, LVIS, ADE20k, DAVIS and "
                                    "ImageNet-A/R/Sketch/C layouts, with a manifest (ssl-bench-data.json).")
    pp.add_argument("--root", required=True, type=Path, help="output folder (new, empty, or made by prepare)")
    pp.add_argument("--profile", default="demo", choices=profile_names(),
                    help="tiny: tens of images per set, for tests; demo: ~10k training images (default)")
    pp.add_argument("--seed", type=int, default=None, help="random seed (default: the profile's, 0)")
    pp.add_argument("--workers", type=int, default=None, help="generator processes (default: all cores)")
    pp.set_defaults(run=_data_prepare)
    pc = sub.add_parser("check", help="validate a dataset folder; one problem per line",
                        description="Validate a dataset in its real on-disk layout (or a set of a prepared tree). "
                                    "Prints one problem per line (file, and line or JSON path) and exits 1 if "
                                    "any, else prints one OK line and exits 0.")
    pc.add_argument("--root", required=True, type=Path, help="the dataset folder, or a prepared tree")
    pc.add_argument("--format", required=True, choices=[*FORMATS, "all"],
                    help="dataset format; 'all' checks every set listed in the manifest of a prepared tree")
    pc.set_defaults(run=_data_check)


def _data_prepare(args: argparse.Namespace) -> int:
    from .data.embedded import prepare

    manifest = prepare(args.root, profile=args.profile, seed=args.seed, workers=args.workers)
    sets = manifest["sets"]
    print(f"prepared {len(sets)} sets in {args.root} (profile {manifest['profile']}, seed {manifest['seed']}): "
          + ", ".join(f"{fmt} -> {entry['subfolder']}" for fmt, entry in sets.items()))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from .data.check import check, manifest_formats

    formats = manifest_formats(args.root) if args.format == "all" else [args.format]
    total = 0
    summary = []
    for fmt in formats:
        folder, problems = check(args.root, fmt)
        for line in problems[:MAX_PRINTED]:
            print(line)
        if len(problems) > MAX_PRINTED:
            print(f"{folder}: ... and {len(problems) - MAX_PRINTED} more {fmt} problems")
        total += len(problems)
        summary.append(f"{fmt} ({folder})")
    if total:
        print(f"{total} problem{'s' if total != 1 else ''} found", file=sys.stderr)
        return 1
    print(f"OK: {', '.join(summary)}")
    return 0


# ----- export --------------------------------------------------------------------------------------
def _export_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from .export import FORMATS

    p.add_argument("--format", required=True, choices=FORMATS, help="target project")
    p.add_argument("--checkpoint", required=True, metavar="SPEC", help=CHECKPOINT_HELP)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--resnet-layout", default="c4", choices=("c4", "fpn"),
                   help="detectron2 ResNet layout: c4 (res5 in roi_heads, MoCo) or fpn (backbone.bottom_up)")


def _export(args: argparse.Namespace) -> int:
    from .export import export

    manifest = export(args.checkpoint, args.format, args.out, layout=args.resnet_layout)
    print(f"export\t{manifest['format']}\t{len(manifest['key_map'])} weights\t{len(manifest['dropped'])} dropped\t"
          f"{Path(args.out) / manifest['files']['weights']}")
    for key, name in manifest["files"].items():
        if key.startswith("config_"):
            print(f"config\t{key[7:]}\t{Path(args.out) / name}")
    return 0


# ----- import --------------------------------------------------------------------------------------
def _import_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from .imports.command import add_arguments

    add_arguments(p)


def _import(args: argparse.Namespace) -> int:
    from .imports.command import run

    return run(args)


# ----- demo ----------------------------------------------------------------------------------------
def _demo_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    p.add_argument("--profile", default="demo", help="embedded data profile: demo or tiny")
    p.add_argument("--data", type=Path, default=Path("sb-data"), help="embedded data folder")
    p.add_argument("--runs", type=Path, default=Path("runs/embedded"), help="pretraining runs folder")
    p.add_argument("--results", type=Path, default=Path("results/embedded"), help="results store")
    p.add_argument("--leaderboard", type=Path, default=Path("leaderboards/embedded"),
                   help="output stem of the leaderboard files")


def _demo(args: argparse.Namespace) -> int:
    from .demo import Demo, DemoLayout

    return Demo(DemoLayout(data=args.data, runs=args.runs, results=args.results, leaderboard=args.leaderboard,
                           profile=args.profile)).run()


# ----- bench ---------------------------------------------------------------------------------------
def _bench_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    """One sub-command per module of ``ssl_bench.benchmarks``; only the one named is imported."""
    from .benchmarks import benchmark_module, benchmark_names

    names = benchmark_names()
    named = _named(rest, names)
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name in names:
        if named in (None, name):
            module = benchmark_module(name)
            bench = sub.add_parser(name, help=module.DESCRIPTION, description=module.__doc__)
            module.add_arguments(bench)
            bench.set_defaults(run=module.run)
        else:
            sub.add_parser(name)


COMMANDS = {c.name: c for c in (
    Command("pretrain", "pretrain a method from a recipe and write checkpoints", _pretrain_arguments, _pretrain,
            _pretrain_workers),
    Command("eval", "evaluate a checkpoint with one or more protocols (one process)", _eval_arguments, _eval,
            _eval_workers),
    Command("sweep", "evaluate every checkpoint with every protocol, one job per checkpoint (its protocols not "
            "yet stored, in one process as eval --protocol p1,p2,... runs them; local processes or a Slurm "
            "job array), then the leaderboard", _sweep_arguments, _sweep),
    Command("leaderboard", "comparison tables and figures from the results store", _leaderboard_arguments,
            _leaderboard),
    Command("data", "prepare the embedded data; check datasets on disk", _data_arguments, None),
    Command("export", "write a backbone in detectron2 / mmdet / mmseg layout plus a config", _export_arguments,
            _export),
    Command("import", "import a foreign checkpoint (strict, audited) as an ssl-bench checkpoint", _import_arguments,
            _import),
    Command("demo", "the main job: embedded data, pretrain all methods, evaluate, leaderboard", _demo_arguments,
            _demo),
    Command("bench", "measure speed (figures and ratios from one run)", _bench_arguments, None),
)}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser of ``ssl-bench``, with the arguments of the command ``argv`` names (if any)."""
    parser = argparse.ArgumentParser(prog="ssl-bench", description=(
        "Pretrain masked siamese SSL methods and evaluate any backbone on the standard protocols."))
    parser.add_argument("--version", action="version", version=f"ssl-bench {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = _named(argv, COMMANDS)
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.name == named:
            command.arguments(p, argv[argv.index(named) + 1:])
            if command.run is not None:
                p.set_defaults(run=command.run)
    _threads_everywhere(parser)
    return parser


def _threads_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--threads`` also after any (sub-)command's name, e.g. ``ssl-bench bench pretrain ... --threads 1``;
    there it overrides the top-level value only when given."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument("--threads", type=int, metavar="N", default=argparse.SUPPRESS, help=THREADS_HELP)
                _threads_everywhere(child)


def _start_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count before the command does any work (``ssl_bench.threads``)."""
    from .threads import apply_threads, choose_threads

    command = COMMANDS[args.command]
    workers = command.loader_workers(args) if command.loader_workers is not None else 0
    apply_threads(choose_threads(args.threads, workers))


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (``UserError``): one line, exit 2. Anything else is a bug: one line
    naming the file its traceback was saved to, exit 1, so the two are told apart."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    set_quiet(args.quiet)
    try:
        _start_threads(args)
        return args.run(args)
    except UserError as err:
        end_bars()
        print(f"ssl-bench: error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        end_bars()
        print("ssl-bench: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last-resort handler: any other failure is a bug
        end_bars()
        saved = _save_traceback(argv)
        print(f"ssl-bench: internal error: {type(err).__name__}: {one_line(err)[:300]} (a bug, not bad input; "
              f"traceback saved to {saved}; please report it)", file=sys.stderr)
        return 1


def _save_traceback(argv: list[str]) -> str:
    """Write the current exception's traceback and the command line to a new file in the temp folder."""
    import tempfile
    import traceback

    try:
        fd, name = tempfile.mkstemp(prefix="ssl-bench-traceback-", suffix=".txt")
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(f"ssl-bench {__version__}: ssl-bench {' '.join(argv)}\n\n{traceback.format_exc()}")
        return name
    except OSError as err:  # nowhere to save it: say so instead
        return f"(not saved: {err.strerror})"


if __name__ == "__main__":
    sys.exit(main())
