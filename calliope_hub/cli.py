"""`calliope-hub`: a thin shell over library functions.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command is chosen, so
``calliope-hub --help`` stays fast and one command's heavy imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: command name -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("calliope_hub.tools.up", "run local ECS, JupyterHub and the proxy on this machine"),
    "local-ecs": ("calliope_hub.localecs.cli", "run the ECS-compatible control plane"),
    "bench-local-ecs": (
        "calliope_hub.tools.bench_localecs",
        "measure local ECS itself with 10,000 sim tasks",
    ),
    "loadtest": ("calliope_hub.tools.loadtest", "spawn N servers on any JupyterHub and time them"),
    "bench": ("calliope_hub.tools.bench", "measure the hub at N servers, batched against naive"),
    "bench-detect": ("calliope_hub.tools.bench_detect", "time until the hub notices a killed task, events vs polling"),
    "monitor": ("calliope_hub.events.monitor", "sweep ECS and push task state changes to the hub's events endpoint"),
    "plan": ("calliope_hub.tools.plan", "size a deployment from a model fitted to bench runs"),
    "ecs": ("calliope_hub.tools.ecs_setup", "ecs setup: register the catalog's task definitions, create the cluster"),
}


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except switches and options without one,
    where "(default: False)" or "(default: None)" would only confuse, and helps that already
    say their default in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calliope-hub",
        description="JupyterHub with every user server as an AWS ECS task.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<11} {summary}" for name, (_, summary) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1] or ["--help"])
    name, rest = argv[0], argv[1:]
    module_name, summary = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"calliope-hub {name}", description=summary, formatter_class=HelpWithDefaults)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
