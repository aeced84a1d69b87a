"""The ``ssl-bench`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import UserError
from .progress import set_quiet


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
    from .leaderboard import pivot, render, write
    from .results import load_results

    if not Path(args.results).is_dir():
        raise UserError(f"--results {args.results}: no such folder; run 'ssl-bench eval' first "
                        "or point --results at a results store")
    write(render(pivot(load_results(args.results)), args.format), args.out)
    return 0


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
                   help="a checkpoint folder/file of ours, random:ARCH, timm:NAME or foreign:ARCH:PATH")
    p.add_argument("--data", type=Path, required=True, help="dataset root or embedded data tree")
    p.add_argument("--recipe", type=Path, help="protocol recipe YAML (default: package defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--results", type=Path, default=Path("results"), help="results store folder")
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object last")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("leaderboard", help="pivot the results store into a table")
    p.add_argument("--results", type=Path, default=Path("results"), help="results store folder")
    p.add_argument("--format", default="md", help="md, csv, tex or html")
    p.add_argument("--out", type=Path, help="output file (default: stdout)")
    p.set_defaults(func=_cmd_leaderboard)

    from .data.cli import add_data_parser

    add_data_parser(sub)

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
        message = " ".join(str(err).split())
        print(f"ssl-bench: error: {message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("ssl-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
