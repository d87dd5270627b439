"""`calliope-hub plan`: options in, a plan (or a fit, a chart, a matrix) out.

Every bad input ends here as one clear line on stderr and exit status 2, like argparse's own
usage errors, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from rich.console import Console

from calliope_hub.tools.plan import calibrate, check, report
from calliope_hub.tools.plan.inputs import INPUT_SOURCES, PlanError, PlanInputs, load_prices, parse_size_mix
from calliope_hub.tools.plan.model import plan

DEFAULTS = {f.name: f.default for f in fields(PlanInputs) if f.default is not MISSING}

#: (flag, PlanInputs field, help) of every number the plan is asked with.
NUMBERS = (
    ("--poll-interval", "poll_interval", "c.Spawner.poll_interval, s"),
    ("--reconcile-interval", "reconcile_interval", "s between full sweeps with events on"),
    ("--activity-interval", "activity_interval", "JUPYTERHUB_ACTIVITY_INTERVAL: s between one server's posts"),
    ("--burst", "burst_per_min", "users per minute starting at once (a class start)"),
    ("--api-rps", "api_rps", "hub REST requests/s besides activity posts"),
    ("--cold-start", "cold_start_s", "s from RunTask to a ready server on Fargate (an input, not measured here)"),
)
#: (flag, PlanInputs field, help) of every on/off choice.
SWITCHES = (
    ("--events", "events", "ECS events delivered (EventBridge/SQS): sweeps slow to the reconcile interval"),
    ("--storage", "storage", "per-user EFS storage (one task-definition revision per user)"),
    ("--standby", "standby", "a hot standby hub"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", type=int, help="concurrent user servers to plan for (N)")
    for flag, name, text in NUMBERS:
        parser.add_argument(flag, type=float, default=DEFAULTS[name], dest=name, help=text)
    for flag, name, text in SWITCHES:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=False, dest=name, help=text)
    parser.add_argument(
        "--ssm-higher-throughput",
        action=argparse.BooleanOptionalAction,
        default=None,
        dest="ssm_higher_throughput",
        help="Parameter Store's higher throughput on or off "
        "(c.ECSSpawner.ssm_higher_throughput; default: on only if it serves the burst sooner)",
    )
    parser.add_argument("--region", default=DEFAULTS["region"], help="region in the prices file")
    parser.add_argument("--prices", type=Path, help="prices JSON (default: the packaged prices.json)")
    parser.add_argument("--mix", default="lab/small", help="user servers by size, e.g. lab/small=0.7,chat/small=0.3")
    parser.add_argument("--json", type=Path, help="write the plan (or the matrix) here as JSON")
    parser.add_argument("--coefficients", type=Path, help="coefficients JSON (default: the packaged one)")
    parser.add_argument("--calibrate", type=Path, nargs="+", metavar="BENCH_JSON", help="fit to these bench files")
    parser.add_argument("--exclude-servers", type=int, nargs="*", default=[], help="with --calibrate: leave out N")
    parser.add_argument("--output", type=Path, help="with --calibrate: where to write (default: the packaged file)")
    parser.add_argument("--chart", type=Path, metavar="FILE.png", help="draw CPU, memory, reads and restart against N")
    parser.add_argument("--matrix", action="store_true", help="print the decision matrix by scale band")
    parser.add_argument("--check", type=Path, metavar="BENCH_JSON", help="compare with the bench run at --servers")
    parser.add_argument("--inputs", action="store_true", help="list the unmeasured inputs and their sources")
    parser.add_argument("--set", action="append", default=[], metavar="INPUT=VALUE",
                        help="override an unmeasured input (see --inputs), e.g. image_gib=2.5")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        return _run(args, console)
    except PlanError as exc:
        print(f"calliope-hub plan: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, console: Console) -> int:
    # every input is checked before anything is written
    inputs = _inputs(args, args.servers if args.servers is not None else 1000)
    prices = load_prices(inputs.region, args.prices)
    if args.calibrate:
        document = calibrate.calibrate(args.calibrate, frozenset(args.exclude_servers))
        out = args.output or calibrate.default_output()
        _write(out, json.dumps(document, indent=1) + "\n")
        report.print_all(console, report.render_fit(document), f"wrote {out}")
        if args.servers is None and not (args.chart or args.matrix):
            return 0
        args.coefficients = out
    if args.servers is None and not args.matrix and not args.chart and not args.inputs:
        raise PlanError("say --servers N (or --calibrate, --matrix, --chart, --inputs)")
    document = calibrate.load_document(args.coefficients)
    coefficients = calibrate.coefficients_of(document)
    written: dict[str, Any] = {}
    if args.inputs:
        report.print_all(console, report.render_inputs())
    if args.servers is not None:
        written = plan(inputs, coefficients, prices)
        report.print_all(console, report.render_plan(written, inputs))
        if args.check:
            run = check.bench_run(args.check, inputs.servers)
            written["check"] = check.compare(written, run, inputs, coefficients)
            report.print_all(console, check.render(written["check"], args.check.name))
    if args.matrix:
        rows = report.matrix_rows(inputs, coefficients, prices)
        report.print_all(console, report.render_matrix(rows))
        written = written or {"matrix": [{"servers": r["servers"], "advice": r["advice"], **r["plan"]} for r in rows]}
    if args.chart:
        from calliope_hub.tools.plan.chart import save_chart

        save_chart(args.chart, inputs, coefficients, prices, calibrate.measured_points(document))
        console.print(f"wrote {args.chart}")
    if args.json and written:
        _write(args.json, json.dumps(written, indent=1) + "\n")
    return 0


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise PlanError(f"cannot write {path}: {exc.strerror or exc}") from None


def _inputs(args: argparse.Namespace, servers: int) -> PlanInputs:
    chosen: dict[str, Any] = {name: getattr(args, name) for _, name, _ in (*NUMBERS, *SWITCHES)}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in INPUT_SOURCES:
            raise PlanError(f"--set {item!r}: unknown input; the inputs are {sorted(INPUT_SOURCES)}")
        try:
            chosen[name] = float(value)
        except ValueError:
            raise PlanError(f"--set {item!r}: {value!r} is not a number") from None
    return PlanInputs(servers=servers, region=args.region, size_mix=parse_size_mix(args.mix),
                      ssm_higher_throughput=args.ssm_higher_throughput, **chosen)  # fmt: skip
