"""The command line: ``gateway run | check | version`` (contract §5), and ``gateway sim`` (issue 7).

Owns argument parsing, the config path rule (--config, then $GATEWAY_CONFIG, then
./gateway.yaml), exit codes (0 ok, 1 invalid config or a port that cannot be bound, 2 usage),
and the event loop (uvloop when importable).
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
    sim = sub.add_parser(
        "sim",
        help="serve simulated Graph, Gemini, Supabase and lookaside upstreams",
        description="Simulated upstreams for config/examples/sim.yaml; counters at GET /_sim/stats on any port.",
    )
    sim.add_argument("--scenario", metavar="PATH", help="scenario YAML (default: instant answers, no faults)")
    sim.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    for name, port in (("graph", 8081), ("gemini", 8082), ("supabase", 8083), ("lookaside", 8084)):
        sim.add_argument(f"--{name}-port", type=int, default=port, metavar="PORT", help=f"default: {port}")
    sim.add_argument("--seed", type=int, help="random seed (default: the scenario's, else a random one, logged)")
    sim.add_argument(
        "--lookaside-url",
        metavar="URL",
        help="base of the media URLs Graph returns (default: https://lookaside.fbsbx.com as Graph's own, which the "
        "backend swaps for its gateway's /lookaside; or the forwarding gateway's X-Forwarded-Host)",
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
    configure(config.log.level, config.log.format, config.log.access_log)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"inbox-gateway {__version__}")
        return 0
    if args.command == "sim":
        from .sim import run_sim

        ports = {name: getattr(args, f"{name}_port") for name in ("graph", "gemini", "supabase", "lookaside")}
        return run_sim(args.scenario, args.host, ports, seed=args.seed, lookaside_url=args.lookaside_url)
    path = config_path(args.config)
    return run(path) if args.command == "run" else check(path)
