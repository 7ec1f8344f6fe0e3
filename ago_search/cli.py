"""Command line: parses arguments and calls ago_search.api; nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ago_search import __version__
from ago_search.errors import AgoSearchError


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the ONNX model file")
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="fix an input's shape, e.g. input=1x3x224x224 (repeat for each input)",
    )


def _threads(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads '{text}': give e.g. 1,2") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"--threads '{text}': thread counts must be >= 1")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ago-search",
        description="Search-based inference optimizer for ONNX models on edge CPUs.",
    )
    parser.add_argument("--version", action="version", version=f"ago-search {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    search = sub.add_parser(
        "search",
        help="the main job: search partitions, fusion and schedules within a time budget "
        "(also: ago-search MODEL --budget 2h)",
    )
    _model_args(search)
    search.add_argument(
        "--budget",
        required=True,
        metavar="TIME",
        help="wall-clock time in all, e.g. 45s, 20m, 2h, 1h30m (a resumed search counts what "
        "earlier runs spent)",
    )
    search.add_argument(
        "--device", default="host", help="'host' (default), a device name or a .toml profile"
    )
    search.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: <model name>-ago-search); run again on it to go on",
    )
    search.add_argument("--seed", type=int, default=0, help="random seed of the search")
    search.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="join a running Ray cluster (e.g. auto); default: an embedded one on this machine",
    )
    search.add_argument(
        "--cost-model",
        choices=["gnn", "xgb", "xgb-ms", "random"],
        default="gnn",
        help="what guides the loop search (default: gnn, the shipped pretrained model)",
    )
    search.add_argument(
        "--no-layouts",
        action="store_true",
        help="keep every group in the model's NCHW (default: a layout per group, searched)",
    )
    search.add_argument(
        "--no-transfer",
        action="store_true",
        help="tune each task from its own schedules only (default: rounds open with similar "
        "tasks' best schedules)",
    )
    search.add_argument(
        "--winograd",
        choices=["off", "2", "4"],
        default="4",
        help="compute 3x3 stride-1 convs as Winograd F(m,3) convs with this tile m (fewer "
        "multiplies, the filters transformed at compile time; default: 4) or directly (off)",
    )
    search.add_argument(
        "--tvm-default",
        choices=["auto", "yes", "no"],
        default="auto",
        help="also build and time TVM's default build at the end, a reference figure (auto: "
        "with budgets of 30 min and more; it takes 10-25 s of a CNN's budget)",
    )
    search.add_argument(
        "--no-progress", action="store_true", help="no progress bar (log lines only)"
    )

    inspect = sub.add_parser(
        "inspect",
        help="operators, FLOPs, parameters, mapping types, TVM's default fusion groups",
    )
    _model_args(inspect)
    inspect.add_argument(
        "--plan",
        metavar="PLAN",
        help="also print a plan's groups, their layouts and the layout transforms placed: a "
        "seed (tvm, dnnfusion, intensive) or a plan.json (the search's, for one)",
    )
    inspect.add_argument(
        "--no-rewrite", action="store_true", help="show the graph before the algebraic rewrites"
    )
    inspect.add_argument("--json", type=Path, help="also write the report as JSON here")

    bench = sub.add_parser(
        "bench",
        help="ONNX Runtime vs TVM's default build, side by side and verified",
    )
    _model_args(bench)
    bench.add_argument(
        "--threads",
        type=_threads,
        default=None,
        help=f"comma-separated thread counts (default: 1,{os.cpu_count()})",
    )
    bench.add_argument("--repeat", type=int, default=None, help="timed repeats per runtime")
    bench.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs")
    bench.add_argument(
        "--min-repeat-ms", type=float, default=None, help="minimum length of one repeat"
    )
    bench.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    bench.add_argument("--json", type=Path, help="write the full result as JSON here")

    tune = sub.add_parser(
        "tune-tasks",
        help="tune a plan's kernels into the tuning database, then time the tuned model",
    )
    _model_args(tune)
    _tuning_db_args(tune)
    tune.add_argument(
        "--trials",
        type=int,
        default=None,
        help="search trials the plan's tasks should have in the database in all, earlier "
        "runs included (default: 16 per task); a killed run started again measures the rest",
    )
    tune.add_argument(
        "--scheduler",
        choices=["first-pass", "gradient", "round-robin"],
        default="first-pass",
        help="task scheduler: ours (every task one cheap round first, then by expected gain) "
        "or MetaSchedule's own",
    )
    tune.add_argument(
        "--cost-model",
        choices=["xgb", "gnn", "xgb-ms", "random"],
        default="xgb",
        help="the search's cost model (xgb: MetaSchedule's XGBoost model with its training "
        "step fixed for many-store candidates; xgb-ms: it as MetaSchedule ships it; gnn: the "
        "shipped pretrained GNN)",
    )
    tune.add_argument(
        "--trials-per-round",
        type=int,
        default=None,
        help="candidates measured per round (default: sized from the budget; 64 for "
        "MetaSchedule's schedulers)",
    )
    tune.add_argument(
        "--no-verify",
        action="store_true",
        help="do not check candidates' outputs against the untuned kernel",
    )
    tune.add_argument("--seed", type=int, default=None, help="the search's random seed")
    tune.add_argument(
        "--no-bench", action="store_true", help="do not time the whole model afterwards"
    )

    measure = sub.add_parser(
        "measure",
        help="time a plan built with the database's best records, verified against ORT",
    )
    _model_args(measure)
    _tuning_db_args(measure)

    train = sub.add_parser(
        "train-cost-model",
        help="train the GNN cost model on device traces; held-out-model metrics vs XGB",
    )
    train.add_argument("traces", nargs="+", type=Path, help="trace files or folders (*.jsonl.gz)")
    train.add_argument("--out", type=Path, required=True, help="folder for the model + metrics")
    train.add_argument(
        "--held-out-models",
        default=None,
        help="comma-separated model names kept for testing; 'none': train on every model",
    )
    train.add_argument("--device", default=None, help="only records of this device key")
    train.add_argument("--steps", type=int, default=None, help="training steps")
    train.add_argument("--no-xgb", action="store_true", help="skip the XGB baseline")
    train.add_argument(
        "--remeasured-only",
        action="store_true",
        help="only clean labels: made by `ago-search remeasure`, or measured after the "
        "measurement fix of 2026-11-21",
    )

    collect = sub.add_parser(
        "collect",
        help="device traces for the cost model: tune the zoo's tasks under every seed plan",
    )
    collect.add_argument("--device", default="host", help="'host', a device name or a .toml")
    collect.add_argument(
        "--models",
        default=None,
        help="comma-separated zoo model names or .onnx files (default: the whole zoo)",
    )
    collect.add_argument(
        "--seeds",
        default="tvm,dnnfusion,intensive",
        help="comma-separated seed partitions, each also as SEED/LAYOUT (tvm/NHWC, "
        "tvm/NCHW16c): traces in layouts",
    )
    collect.add_argument(
        "--trials-per-task", type=int, default=64, help="search trials each task ends with"
    )
    collect.add_argument(
        "--first-trials", type=int, default=8, help="pass 1's trials per task (random sampling)"
    )
    collect.add_argument(
        "--step-trials", type=int, default=16, help="trials per task added by each later pass"
    )
    collect.add_argument(
        "--hours", type=float, default=None, help="time budget: no new batch after this"
    )
    collect.add_argument(
        "--cost-model",
        choices=["xgb", "random"],
        default="xgb",
        help="cost model of the passes after the first (xgb: evolutionary search)",
    )
    collect.add_argument("--batch-tasks", type=int, default=32, help="tasks tuned per batch")
    collect.add_argument(
        "--db", type=Path, default=None, help="the tuning database (default: OUT/collect.db)"
    )
    collect.add_argument(
        "--out",
        type=Path,
        default=None,
        help="export folder (default: datasets/traces/<device key>)",
    )
    collect.add_argument("--zoo", type=Path, default=None, help="zoo folder with manifest.json")
    collect.add_argument(
        "--no-verify", action="store_true", help="do not check candidates' outputs"
    )
    collect.add_argument("--seed", type=int, default=None, help="the search's random seed")
    collect.add_argument(
        "--labels-only",
        action="store_true",
        help="only (re)write models.json and tasks.json beside the export; measure nothing",
    )
    collect.add_argument("--json", type=Path, help="write the summary as JSON here")

    again = sub.add_parser(
        "remeasure",
        help="time the ok records of a tuning database again and replace their labels",
    )
    again.add_argument("db", type=Path, help="the tuning database (SQLite file)")
    again.add_argument("--device", default="host", help="'host' or a local device profile")
    again.add_argument(
        "--from",
        dest="sources",
        type=Path,
        action="append",
        default=None,
        help="trace files or folders to import into DB first (repeatable)",
    )
    again.add_argument(
        "--per-task", type=int, default=None, help="at most this many records of each task"
    )
    again.add_argument("--rounds", type=int, default=2, help="interleaved timings per record")
    again.add_argument(
        "--hours", type=float, default=None, help="time budget: no new task after this"
    )
    again.add_argument("--seed", type=int, default=0, help="task order and per-task samples")
    again.add_argument(
        "--export", type=Path, default=None, help="write the re-measured records here (.jsonl.gz)"
    )
    again.add_argument("--json", type=Path, help="write the summary as JSON here")
    # -v after the command too (`ago-search model.onnx --budget 5m -v`); given there it counts
    # in place of the one before the command
    for command in sub.choices.values():
        command.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging"
        )
    return parser


def _show(summary: str, report: Any, json_path: Path | None) -> None:
    """Print a command's summary; write its report as JSON too when --json asks for it."""
    print(summary)
    if json_path:
        from ago_search import api

        api.write_json(report.to_json(), json_path)
        print(f"\nwritten: {json_path}")


def _tuning_db_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan",
        default="tvm",
        metavar="PLAN",
        help="a seed plan (tvm, dnnfusion, intensive; SEED/LAYOUT puts its groups in a layout: "
        "tvm/NHWC, tvm/NCHW16c) or a plan.json (default: tvm)",
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=Path("ago-tuning.db"),
        help="the tuning database (default: ./ago-tuning.db)",
    )
    parser.add_argument("--device", default="host", help="'host', a device name or a .toml profile")
    parser.add_argument(
        "--threads",
        type=_threads,
        default=None,
        help="comma-separated thread counts for the model timing (default: the device's)",
    )
    parser.add_argument("--json", type=Path, help="write the full report as JSON here")


COMMANDS = (
    "search",
    "inspect",
    "bench",
    "tune-tasks",
    "measure",
    "train-cost-model",
    "collect",
    "remeasure",
)


def _with_command(argv: list[str]) -> list[str]:
    """`ago-search MODEL --budget 2h` is `ago-search search MODEL --budget 2h`."""
    for i, arg in enumerate(argv):
        if arg.startswith("-"):
            if arg in ("-h", "--help", "--version"):
                return argv
            continue
        return argv if arg in COMMANDS else [*argv[:i], "search", *argv[i:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_with_command(argv))
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        from ago_search import api

        if args.command == "search":
            for name in ("ago_search.search",):
                logging.getLogger(name).setLevel(min(level, logging.INFO))
            result = api.search(
                args.model,
                args.budget,
                args.input_shape,
                device=args.device,
                out=args.out,
                seed=args.seed,
                ray_address=args.ray_address,
                cost_model=args.cost_model,
                progress=not args.no_progress,
                layouts=not args.no_layouts,
                transfer=not args.no_transfer,
                winograd=None if args.winograd == "off" else int(args.winograd),
                time_tvm_default={"auto": None, "yes": True, "no": False}[args.tvm_default],
            )
            print(api.format_search(result))
            if result.interrupted:
                return 130
            if not result.summary.get("verified"):
                print(
                    "\nthe plan's outputs differ from ONNX Runtime's, or it could not be timed "
                    "(see above)",
                    file=sys.stderr,
                )
                return 3
        elif args.command == "inspect":
            report = api.inspect(
                args.model, args.input_shape, plan=args.plan, rewrite=not args.no_rewrite
            )
            _show(api.format_inspect(report), report, args.json)
        elif args.command == "bench":
            result = api.bench(
                args.model,
                args.input_shape,
                threads=args.threads,
                repeat=args.repeat,
                warmup=args.warmup,
                min_repeat_ms=args.min_repeat_ms,
                seed=args.seed,
            )
            _show(api.format_bench(result), result, args.json)
            if not result.verified:
                print(
                    "\nTVM's outputs differ from ONNX Runtime's beyond tolerance (see the "
                    "error columns).",
                    file=sys.stderr,
                )
                return 3
        elif args.command == "train-cost-model":
            metrics = api.train_cost_model(
                args.traces,
                args.out,
                held_out_models=(
                    []
                    if args.held_out_models == "none"
                    else args.held_out_models.split(",")
                    if args.held_out_models
                    else None
                ),
                device_key=args.device,
                steps=args.steps,
                compare_xgb=not args.no_xgb,
                remeasured_only=args.remeasured_only,
            )
            print(api.format_cost_model_metrics(metrics))
            print(f"\nwritten: {args.out}")
        elif args.command == "collect":
            for name in ("ago_search.collect", "ago_search.schedule"):
                logging.getLogger(name).setLevel(min(level, logging.INFO))
            report = api.collect(
                models=args.models.split(",") if args.models else None,
                device=args.device,
                db=args.db,
                out=args.out,
                seeds=[s for s in args.seeds.split(",") if s],
                trials_per_task=args.trials_per_task,
                first_trials=args.first_trials,
                step_trials=args.step_trials,
                hours=args.hours,
                cost_model=args.cost_model,
                batch_tasks=args.batch_tasks,
                zoo=args.zoo,
                verify=not args.no_verify,
                seed=args.seed,
                labels_only=args.labels_only,
            )
            _show(api.format_collect(report), report, args.json)
        elif args.command == "remeasure":
            logging.getLogger("ago_search.remeasure").setLevel(min(level, logging.INFO))
            report = api.remeasure(
                args.db,
                device=args.device,
                per_task=args.per_task,
                rounds=args.rounds,
                hours=args.hours,
                seed=args.seed,
                sources=args.sources,
                export=args.export,
            )
            _show(api.format_remeasure(report), report, args.json)
        elif args.command in ("tune-tasks", "measure"):
            if args.command == "tune-tasks":
                # progress of a long run: one line per round from the tuning layer
                logging.getLogger("ago_search.schedule").setLevel(min(level, logging.INFO))
                report = api.tune_tasks(
                    args.model,
                    args.input_shape,
                    plan=args.plan,
                    trials=args.trials,
                    db=args.db,
                    device=args.device,
                    scheduler=args.scheduler,
                    cost_model=args.cost_model,
                    trials_per_round=args.trials_per_round,
                    verify=not args.no_verify,
                    seed=args.seed,
                    threads=args.threads,
                    bench=not args.no_bench,
                )
            else:
                report = api.measure(
                    args.model,
                    args.input_shape,
                    plan=args.plan,
                    db=args.db,
                    device=args.device,
                    threads=args.threads,
                )
            _show(api.format_tuned(report), report, args.json)
            if not report.verified:
                print(
                    "\nthe model's outputs differ from ONNX Runtime's beyond tolerance (see the "
                    "error columns).",
                    file=sys.stderr,
                )
                return 3
    except AgoSearchError as exc:
        print(f"ago-search: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ago-search: interrupted", file=sys.stderr)
        return 130
    return 0


def entry() -> int:
    """The `ago-search` command (and `python -m ago_search.cli`): `main` in a process of its
    own, started without PyTorch (`_lazy.without_torch`: 2 s of every command's start-up).
    `main` called in a process that uses torch, as the tests do, leaves it alone."""
    from ago_search._lazy import without_torch

    without_torch()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
