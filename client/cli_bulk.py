"""``pyserving-client batch-predict`` and ``compare``: bulk inference and rollout testing."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from pyserving.client import compare as comparison
from pyserving.client.array_files import load_inputs, load_npy
from pyserving.client.batch_output import BatchOutput
from pyserving.client.bulk import count_batches, count_rows, predict_batches
from pyserving.client.cli import EXIT_FAILED, UsageError, print_json
from pyserving.client.errors import PredictionError
from pyserving.client.progress import Progress, duration
from pyserving.client.replay import load_requests
from pyserving.client.sync_client import PredictionClient

EXIT_INTERRUPTED = 130  # as a shell reports SIGINT


def add_commands(commands: Any, connection: argparse.ArgumentParser,
                 model: argparse.ArgumentParser) -> None:
    bulk = commands.add_parser(
        "batch-predict", parents=[connection, model], help="stream a large input file through "
        "Predict in batches, into an .npz", description=BATCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    bulk.add_argument("--inputs", type=Path, required=True, metavar="FILE",
                      help="named inputs: an .npz (uncompressed ones are memory-mapped), a "
                           "JSON object, or an .npy with --input-name")
    bulk.add_argument("--input-name", help="the input an .npy file feeds")
    bulk.add_argument("--output-filter", action="append", default=[], metavar="NAME",
                      help="keep only these outputs (repeatable)")
    bulk.add_argument("--out", type=Path, required=True, help="the .npz to write")
    bulk.add_argument("--batch-size", type=int, default=64, help="rows per request (64)")
    bulk.add_argument("--in-flight", type=int, default=8,
                      help="requests running at once (8)")
    bulk.add_argument("--resume", action="store_true",
                      help="continue an interrupted run: send only the missing batches")
    bulk.add_argument("--max-batches", type=int,
                      help="send at most this many batches, then stop (continue with --resume)")
    bulk.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="draw a progress bar on stderr (default: when it is a terminal)")
    bulk.add_argument("--json", action="store_true", help="print the summary as JSON")
    bulk.set_defaults(run=run_batch_predict)

    compare = commands.add_parser(
        "compare", parents=[connection], help="replay requests against two versions or "
        "labels and compare outputs and latency", description=comparison.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("--model", required=True, help="the model both sides serve")
    compare.add_argument("--a", required=True, metavar="SIDE",
                         help="the baseline: version=N or label=L")
    compare.add_argument("--b", required=True, metavar="SIDE",
                         help="the candidate: version=N or label=L")
    compare.add_argument("--signature", help="signature of both sides (default: the "
                         "request's own, else serving_default)")
    compare.add_argument("--inputs", type=Path, required=True, metavar="FILE",
                         help="requests: .npz (split by --batch-size), JSON lines (.jsonl), "
                              ".json, or a TFRecord of PredictionLogs (a TF Serving warmup "
                              "file or a request log)")
    compare.add_argument("--batch-size", type=int, default=32,
                         help="rows per request from an .npz (32)")
    compare.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (1e-6)")
    compare.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (1e-5)")
    compare.add_argument("--min-argmax-agreement", type=float, metavar="FRACTION",
                         help="also fail when score outputs agree on argmax less often")
    compare.add_argument("--json", action="store_true", help="print the report as JSON")
    compare.set_defaults(run=run_compare)


BATCH_DESCRIPTION = """\
Streams --inputs through Predict, --batch-size rows per request with at most --in-flight
requests at once, and writes the outputs in input order to --out (an .npz).

Resuming: each finished batch is saved at once in OUT.partial/ (with a manifest of the
run); an interrupted run (killed, failed, or stopped by --max-batches) leaves that folder,
and rerunning the same command with --resume sends only the batches not saved yet. When all
are saved they are joined into OUT and the folder is removed.
"""


def run_batch_predict(client: PredictionClient, args: argparse.Namespace) -> int:
    max_batches = 1 if args.max_batches is None else args.max_batches
    if min(args.batch_size, args.in_flight, max_batches) < 1:
        raise UsageError("--batch-size, --in-flight and --max-batches must be at least 1")
    inputs = _bulk_inputs(args)
    try:
        rows = count_rows(inputs)
    except ValueError as error:
        raise UsageError(str(error)) from None
    batches = count_batches(rows, args.batch_size)
    output = BatchOutput(args.out, {
        "inputs": str(args.inputs.resolve()), "rows": rows, "batch_size": args.batch_size,
        "model": args.model, "version": args.version, "label": args.label,
        "signature": args.signature, "output_filter": args.output_filter,
        "input_layout": {name: [list(a.shape), str(a.dtype)] for name, a in inputs.items()},
    }, resume=args.resume)
    done = output.done()
    resumed_rows = sum(min(args.batch_size, rows - i * args.batch_size) for i in done)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = Progress(rows, sys.stderr, enabled=show, done=resumed_rows)
    sent, failure, interrupted = _send(client, args, inputs, output, done, progress)
    complete = len(done) + sent == batches
    if complete:
        output.assemble(batches)
    summary = {"rows": rows, "batches": batches, "sent_batches": sent,
               "resumed_batches": len(done), "sent_rows": progress.sent,
               "seconds": round(progress.elapsed, 3), "rows_per_second": round(progress.rate, 1),
               "complete": complete, "out": str(args.out if complete else output.folder)}
    if failure is not None:
        summary["error"] = str(failure)
    _print_summary(summary, as_json=args.json)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if failure is not None else 0


def _send(client: PredictionClient, args: argparse.Namespace, inputs: dict[str, Any],
          output: BatchOutput, done: set[int], progress: Progress
          ) -> tuple[int, PredictionError | None, bool]:
    """Send the batches not done yet, saving each; returns (batches sent, the error that
    stopped them, whether the user interrupted)."""
    sent = 0
    try:
        for batch in predict_batches(client, args.model, inputs, batch_size=args.batch_size,
                                     in_flight=args.in_flight, version=args.version,
                                     label=args.label, signature=args.signature,
                                     output_filter=args.output_filter or None, skip=done):
            output.write(batch.index, batch.outputs)
            progress.advance(batch.stop - batch.start)
            sent += 1
            if args.max_batches is not None and sent >= args.max_batches:
                break
    except PredictionError as error:
        return sent, error, False
    except KeyboardInterrupt:
        return sent, None, True
    finally:
        progress.close()
    return sent, None, False


def _bulk_inputs(args: argparse.Namespace) -> dict[str, Any]:
    try:
        if args.inputs.suffix == ".npy":
            if not args.input_name:
                raise UsageError("an .npy file needs --input-name")
            return {args.input_name: load_npy(args.inputs)}
        return load_inputs(args.inputs)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _print_summary(summary: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    print(f"{summary['sent_rows']} rows in {summary['sent_batches']} batches, "
          f"{duration(summary['seconds'])} ({summary['seconds']:.2f} s), "
          f"{summary['rows_per_second']:,.0f} rows/s"
          + (f"; {summary['resumed_batches']} batches resumed" if summary["resumed_batches"]
             else ""))
    if "error" in summary:
        print(f"stopped by an error: {summary['error']}")
    if summary["complete"]:
        print(f"wrote {summary['rows']} rows to {summary['out']}")
    else:
        remaining = summary["batches"] - summary["sent_batches"] - summary["resumed_batches"]
        print(f"incomplete: {remaining} of {summary['batches']} batches left in "
              f"{summary['out']}; rerun with --resume to continue")


def run_compare(client: PredictionClient, args: argparse.Namespace) -> int:
    try:
        side_a = comparison.Side.parse(args.a, args.model)
        side_b = comparison.Side.parse(args.b, args.model)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.signature:
        side_a = dataclasses.replace(side_a, signature=side_a.signature or args.signature)
        side_b = dataclasses.replace(side_b, signature=side_b.signature or args.signature)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    try:
        requests = load_requests(args.inputs, batch_size=args.batch_size)
    except (ValueError, json.JSONDecodeError) as error:
        raise UsageError(str(error)) from None
    if not requests:
        raise UsageError(f"{args.inputs}: no requests")
    report = comparison.compare(client, side_a, side_b, requests, atol=args.atol,
                                rtol=args.rtol, min_argmax_agreement=args.min_argmax_agreement)
    if args.json:
        print_json(report.as_dict())
    else:
        print(report.format())
    return 0 if report.passed else EXIT_FAILED

