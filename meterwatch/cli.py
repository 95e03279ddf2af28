"""The ``meterwatch`` command: ``worker`` runs the stream processor, ``dev`` runs everything."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_settings


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
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
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
