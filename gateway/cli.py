"""The command line: ``gateway run | check | version`` (contract §5), and ``gateway sim`` (issues 7, 13).

Owns argument parsing, the config path rule (--config, then $GATEWAY_CONFIG, then
./gateway.yaml), exit codes (0 ok, 1 invalid config or a port that cannot be bound, 2 usage),
and the event loop (uvloop when importable). ``gateway sim`` hands its arguments to
``gateway_sim.cli`` (the simulator, a separate distribution installed with the ``sim`` extra), or
says in one line how to install it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import yaml

from . import __version__
from .config import config_path, escape_dollars, load_config, redacted
from .errors import ConfigError
from .logs import configure, event, redact_data, redact_text

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Resilience sidecar for the inbox backend's APIs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "serve the proxy and admin ports"), ("check", "validate a configuration and print it")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", metavar="PATH", help="default: $GATEWAY_CONFIG, then ./gateway.yaml")
    sub.add_parser("version", help="print the version")
    sub.add_parser(  # parsed by gateway_sim.cli (the ``sim`` extra): see ``_sim``
        "sim",
        help="serve simulated Graph, Gemini, Supabase and lookaside upstreams (needs the sim extra)",
        add_help=False,
    )
    return parser


def _loop_factory() -> object | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(redact_text(str(exc)), file=sys.stderr)  # a problem may quote a secret's value
        return 1
    configure(config.log.level, config.log.format, config.log.access_log, config.log.redact_query)
    from .server import Gateway

    async def main() -> int:
        gateway = Gateway(config, path)
        try:
            await gateway.run()
        except OSError as exc:
            event("cannot start: a listen address cannot be bound", error=str(exc))
            print(f"{path}: cannot bind a listen address: {exc}", file=sys.stderr)
            await gateway.close()
            return 1
        return 0

    factory = _loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[arg-type]
        return runner.run(main())


def check(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(redact_text(str(exc)), file=sys.stderr)  # a problem may quote a secret's value
        return 1
    print(f"# {path}: valid. Effective configuration, secrets shown as ***:")
    shown = escape_dollars(redact_data(redacted(config)))  # '$$' as in the file: the output is a valid config
    print(yaml.safe_dump(shown, sort_keys=False, default_flow_style=False), end="")
    return 0


SIM_MISSING = 'gateway sim: the simulator is not installed; install it with pip install ".[sim]" in the source tree'


def _sim(argv: Sequence[str]) -> int:
    """``gateway sim ARGS``: the simulator's own command line (``gateway_sim``, a separate distribution)."""
    try:
        from gateway_sim.cli import main as sim_main
    except ModuleNotFoundError as exc:
        if exc.name not in ("gateway_sim", "gateway_sim.cli"):
            raise  # a dependency of an installed simulator is missing: the traceback says which
        print(SIM_MISSING, file=sys.stderr)
        return 1
    return sim_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        return _sim(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"inbox-gateway {__version__}")
        return 0
    path = config_path(args.config)
    return run(path) if args.command == "run" else check(path)
