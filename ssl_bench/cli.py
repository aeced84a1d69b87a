"""The ``ssl-bench`` command line."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from . import __version__
from .errors import UserError
from .progress import set_quiet

#: terminal control sequences (colours, cursor moves) some libraries put into exception texts
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .engine import pretrain

    checkpoint = pretrain(args.recipe, args.set, args.out, device=args.device)
    print(checkpoint)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    records, path = evaluate(args.protocol, args.checkpoint, args.data, recipe=args.recipe,
                             sets=args.set, results_dir=args.results, device=args.device)
    for record in records:
        print(f"{args.protocol}\t{record['dataset']}\t{record['metric']}\t{record['value']:.4f}")
    print(f"stored: {path}", file=sys.stderr)
    if args.json:
        metrics = {f"{r['dataset']}/{r['metric']}": r["value"] for r in records}
        print(json.dumps({"protocol": args.protocol, "checkpoint": args.checkpoint,
                          "results_file": str(path), "metrics": metrics}))
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import FILE_FORMATS, TEXT_FORMATS, build_table, write
    from .results import load_results

    formats = list(FILE_FORMATS) if args.format == "all" else [args.format]
    if args.format != "all" and args.format not in FILE_FORMATS:
        raise UserError(f"--format {args.format}: unknown format; valid: {', '.join(FILE_FORMATS)}, all")
    if args.out is None and args.format not in TEXT_FORMATS:
        raise UserError(f"--format {args.format} writes files: give --out (a file, or a stem for 'all')")
    if not Path(args.results).is_dir():
        raise UserError(f"--results {args.results}: no such folder; run 'ssl-bench eval' first "
                        "or point --results at a results store")
    table = build_table(load_results(args.results), reported=args.reported, baseline=args.baseline,
                        targets=args.target or None, n_boot=args.bootstrap, confidence=args.confidence,
                        seed=args.seed, digits=args.digits, title=args.title,
                        reported_scope="all" if args.all_reported else "measured")
    if args.format in TEXT_FORMATS:
        write(table.render(args.format), args.out)
        return 0
    stem = args.out if args.format == "all" else args.out.with_suffix("")
    for paths in table.write(stem, formats).values():
        for path in paths:
            print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import Demo, DemoLayout

    layout = DemoLayout(data=args.data, runs=args.runs, results=args.results,
                        leaderboard=args.leaderboard, profile=args.profile)
    return Demo(layout).run()


def _cmd_bench(args: argparse.Namespace) -> int:
    return args.bench_run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-bench", description=(
        "Pretrain masked siamese SSL methods and evaluate any backbone on the standard protocols."))
    parser.add_argument("--version", action="version", version=f"ssl-bench {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    set_help = "override a recipe key, e.g. --set optim.lr=0.001 (repeatable)"
    device_help = "auto (CUDA if available), cpu or cuda[:N]"

    p = sub.add_parser("pretrain", help="pretrain a method from a recipe and write checkpoints")
    p.add_argument("--recipe", type=Path, required=True, help="recipe YAML, e.g. pretrain/msn_tiny.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds a run)")
    p.add_argument("--device", default="auto", help=device_help)
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a checkpoint with one protocol")
    p.add_argument("--protocol", required=True, help="protocol name, e.g. knn")
    p.add_argument("--checkpoint", required=True, metavar="SPEC",
                   help="a checkpoint folder/file of ours (ssl-bench import writes one from a foreign file), "
                        "random:ARCH, timm:NAME or foreign:ARCH:PATH (strict import, layout recognised)")
    p.add_argument("--data", type=Path, required=True, help="dataset root or embedded data tree")
    p.add_argument("--recipe", type=Path, help="protocol recipe YAML (default: package defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--results", type=Path, default=Path("results"), help="results store folder")
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object last")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("leaderboard", help="comparison tables and figures from the results store")
    p.add_argument("--results", type=Path, default=Path("results"), help="results store folder")
    p.add_argument("--format", default="md",
                   help="md, csv (long form), tex, html (page with figures), png (figures: OUT.png "
                        "overview + OUT.<protocol>.png) or all (every format; --out is a stem)")
    p.add_argument("--out", type=Path, help="output file (default: stdout; required for png and all)")
    p.add_argument("--reported", nargs="?", const=True, default=None, metavar="CSV",
                   help="add the papers' published numbers as rows marked (reported); "
                        "default CSV: leaderboards/reported.csv")
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
    p.set_defaults(func=_cmd_leaderboard)

    from .data.cli import add_data_parser

    add_data_parser(sub)

    from .export import add_export_parser

    add_export_parser(sub)

    from .imports.command import add_import_parser

    add_import_parser(sub)

    p = sub.add_parser("demo", help="the main job: embedded data, pretrain all methods, evaluate, leaderboard")
    p.add_argument("--profile", default="demo", help="embedded data profile: demo or tiny")
    p.add_argument("--data", type=Path, default=Path("sb-data"), help="embedded data folder")
    p.add_argument("--runs", type=Path, default=Path("runs/embedded"), help="pretraining runs folder")
    p.add_argument("--results", type=Path, default=Path("results/embedded"), help="results store")
    p.add_argument("--leaderboard", type=Path, default=Path("leaderboards/embedded"),
                   help="output stem of the leaderboard files")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="measure speed (figures and ratios from one run)")
    bench_sub = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    from .benchmarks import benchmark_modules

    for name, module in benchmark_modules().items():
        bp = bench_sub.add_parser(name, help=module.DESCRIPTION)
        module.add_arguments(bp)
        bp.set_defaults(func=_cmd_bench, bench_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    try:
        return args.func(args)
    except UserError as err:
        message = " ".join(_ESCAPES.sub("", str(err)).split())
        print(f"ssl-bench: error: {message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("ssl-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
