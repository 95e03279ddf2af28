"""The ``meterwatch`` command: ``worker``, ``dev`` (everything on this machine), ``token`` and ``acls``."""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import UTC, datetime

from .config import ConfigError, Settings, load_settings, parse_duration
from .models.common import METRIC_NAMES
from .tokens import KeyConfigError, Keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meterwatch", description="Usage metering and alerting on Kafka.")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run the stream processor (configured by METERWATCH_* variables)")
    worker.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        metavar="PID",
        help="stop when process PID is no longer this worker's parent (`meterwatch dev` passes its own)",
    )
    dev = commands.add_parser("dev", help="run a broker, the worker and demo usage on this machine")
    dev.add_argument("--events-per-second", type=float, default=20.0, help="demo usage rate (default 20)")
    dev.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    token = commands.add_parser(
        "token", help="print a bearer token for the HTTP API and the usage page, signed with METERWATCH_AUTH_SECRET"
    )
    who = token.add_mutually_exclusive_group(required=True)
    who.add_argument("--workspace", action="append", metavar="ID", help="a workspace it may read (repeat for more)")
    who.add_argument("--service", action="store_true", help="an operator's token: every route, every workspace")
    token.add_argument("--metric", action="append", metavar="NAME", help="only this metric (repeat; default: all)")
    token.add_argument("--billing", action="store_true", help="may manage billing (settings, contacts)")
    token.add_argument("--ttl", default="1h", help="how long it is valid: 90s, 15m, 1h, 7d (default 1h)")
    acls = commands.add_parser(
        "acls", help="print the kafka-acls.sh commands that grant a principal what a worker of this deployment needs"
    )
    acls.add_argument("--principal", default="User:meterwatch", help="the worker's principal (default User:meterwatch)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "token":
            return _print_token(settings, args)
        if args.command == "acls":
            return _print_acls(settings, args.principal)
        if args.command == "worker":
            from .worker import StartupError, run_worker

            try:
                return run_worker(settings, parent_pid=args.parent_pid)
            except StartupError as error:
                print(f"meterwatch: {error}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                # SIGINT before Faust took over the signals (while waiting for the broker).
                return 130
        from .dev import run_dev

        return run_dev(settings, events_per_second=args.events_per_second, duration=args.duration)
    except ConfigError as error:
        print(f"meterwatch: configuration error: {error}", file=sys.stderr)
        return 2


def _print_token(settings: Settings, args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl)
    if ttl is None or ttl.total_seconds() <= 0:
        print(f"meterwatch token: --ttl: expected a duration such as 15m, 1h or 7d, not {args.ttl!r}", file=sys.stderr)
        return 2
    unknown = sorted(set(args.metric or ()) - set(METRIC_NAMES))
    if unknown:
        print(
            f"meterwatch token: --metric: unknown metric {unknown[0]!r} (one of {', '.join(sorted(METRIC_NAMES))})",
            file=sys.stderr,
        )
        return 2
    if args.service and (args.metric or args.billing):
        print("meterwatch token: --service reads everything; --metric and --billing are for workspace tokens",
              file=sys.stderr)  # fmt: skip
        return 2
    if settings.auth_secret is None:
        print("meterwatch token: METERWATCH_AUTH_SECRET is not set: there is no key to sign with", file=sys.stderr)
        return 2
    try:
        keys = Keys.load(settings.auth_secret.get_secret_value(), None)
        print(
            keys.mint(
                datetime.now(UTC),
                ttl,
                workspaces=args.workspace or (),
                metrics=args.metric,
                billing=args.billing,
                service=args.service,
                subject="meterwatch-cli",
            )
        )
    except KeyConfigError as error:
        print(f"meterwatch token: {error}", file=sys.stderr)
        return 2
    return 0


def _print_acls(settings: Settings, principal: str) -> int:
    from .streams.topics import acl_bindings

    bootstrap = settings.kafka_bootstrap or "BOOTSTRAP"
    print(f"# What {principal} needs as a worker of {settings.group_id} (topic prefix {settings.topic_prefix!r});")
    print("# add --command-config FILE with an administrator's credentials on a secured cluster.")
    for binding in acl_bindings(settings):
        print(shlex.join(["kafka-acls.sh", "--bootstrap-server", bootstrap, *binding.kafka_acls_arguments(principal)]))
    return 0
