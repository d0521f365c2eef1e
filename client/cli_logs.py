"""``pyserving-client logs``: request logs (TFRecord files of PredictionLog, as pyserving's
``logging_config`` writes them) shown as JSON, turned into warmup files, replayed against a
server. Needs no TensorFlow."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyserving.client.errors import PredictionError
from pyserving.client.log_replay import replay
from pyserving.client.prediction_logs import (
    MAX_WARMUP_RECORDS,
    LogFileError,
    as_json,
    read_logs,
    selected,
    write_warmup,
)
from pyserving.client.sync_client import PredictionClient

EXIT_FAILED, EXIT_USAGE = 1, 2


def add_command(commands: Any, connection: argparse.ArgumentParser) -> None:
    logs = commands.add_parser("logs", help="request logs: show, to-warmup, replay",
                               description=__doc__)
    actions = logs.add_subparsers(dest="logs_command", required=True, metavar="ACTION")

    show = actions.add_parser("show", help="print each record as one JSON object (for jq)")
    show.add_argument("files", nargs="+", type=Path, metavar="FILE")
    show.add_argument("--model", help="only the records of this model")
    show.add_argument("--signature", help="only the records of this signature")
    show.set_defaults(run=_offline(run_show), rest_only=True)

    warmup = actions.add_parser(
        "to-warmup", help="write a tf_serving_warmup_requests file from logged requests")
    warmup.add_argument("files", nargs="+", type=Path, metavar="FILE")
    warmup.add_argument("--output", type=Path, required=True,
                        help="the file to write (assets.extra/tf_serving_warmup_requests)")
    warmup.add_argument("--max_records", "--max-records", type=int,
                        default=MAX_WARMUP_RECORDS,
                        help="records to keep at most (default and TF Serving's limit: "
                             "%(default)s)")
    warmup.add_argument("--model", help="only the records of this model")
    warmup.add_argument("--signature", help="only the records of this signature")
    warmup.set_defaults(run=_offline(run_to_warmup), rest_only=True)

    again = actions.add_parser(
        "replay", parents=[connection], help="send logged requests to a server and compare "
        "its answers with the logged ones")
    again.add_argument("files", nargs="+", type=Path, metavar="FILE")
    choice = again.add_mutually_exclusive_group()
    choice.add_argument("--version", type=int, help="send every request to this version")
    choice.add_argument("--label", help="send every request to this version label")
    again.add_argument("--model", help="only the records of this model")
    again.add_argument("--signature", help="only the records of this signature")
    again.add_argument("--max_abs_diff", "--max-abs-diff", type=float, default=1e-6,
                       help="largest difference from a logged value that still matches "
                            "(default: %(default)s)")
    pace = again.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="requests per second (open loop)")
    pace.add_argument("--concurrency", type=int, default=1,
                      help="requests in flight at once (default: %(default)s)")
    again.add_argument("--json", action="store_true", help="print the report as JSON")
    again.set_defaults(run=run_replay)


def _offline(run: Callable[[argparse.Namespace], int]
             ) -> Callable[[Any, argparse.Namespace], int]:
    """A command that reads files only: its errors are printed here (exit status 2)."""
    def command(_: Any, args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (LogFileError, OSError) as error:
            print(f"pyserving-client: {error}", file=sys.stderr)
            return EXIT_USAGE
    return command


def run_show(args: argparse.Namespace) -> int:
    try:
        for record in selected(read_logs(args.files), args.model, args.signature):
            sys.stdout.write(json.dumps(as_json(record)) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (``| head``): stop quietly, as a Unix filter does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def run_to_warmup(args: argparse.Namespace) -> int:
    if not 1 <= args.max_records <= MAX_WARMUP_RECORDS:
        print(f"pyserving-client: --max_records must be 1..{MAX_WARMUP_RECORDS} (TF Serving "
              "refuses a warmup file with more)", file=sys.stderr)
        return EXIT_USAGE
    count = write_warmup(selected(read_logs(args.files), args.model, args.signature),
                         args.output, args.max_records)
    if not count:
        print("pyserving-client: no records to write (check --model / --signature)",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {count} warmup records to {args.output}", file=sys.stderr)
    return 0


def run_replay(client: PredictionClient, args: argparse.Namespace) -> int:
    if (args.rate is not None and args.rate <= 0) or args.concurrency < 1:
        print("pyserving-client: --rate and --concurrency must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = replay(client, selected(read_logs(args.files), args.model, args.signature),
                        version=args.version, label=args.label,
                        max_abs_diff=args.max_abs_diff, concurrency=args.concurrency,
                        rate=args.rate)
    except LogFileError as error:
        print(f"pyserving-client: {error}", file=sys.stderr)
        return EXIT_USAGE
    except PredictionError as error:  # not expected: replay() counts failed requests
        print(f"pyserving-client: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(report.format())
    return 0 if report.passed else EXIT_FAILED
