"""pyserving-client: TF Serving's APIs from the command line.

Exit status: 0 on success, 1 when the server answers with an error (or compare finds a
difference), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format, text_format

from pyserving.client import array_files, cli_logs, cli_rollout
from pyserving.client.apis import model_server_config_pb2
from pyserving.client.batch_output import OutputError
from pyserving.client.channel import TLS, ChannelOptions
from pyserving.client.errors import PredictionError
from pyserving.client.replay import ReplayError
from pyserving.client.requests import tensor_proto
from pyserving.client.sync_client import DEFAULT_RETRIES, DEFAULT_TIMEOUT, PredictionClient
from pyserving.client.tensors import as_tensor_array

EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments or input files: exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    from pyserving.client import cli_bulk

    parser = build_parser(cli_bulk.add_commands)
    args = parser.parse_args(argv)
    if getattr(args, "rest_only", False):  # talks to the REST port, needs no gRPC channel
        return args.run(None, args) or 0
    try:
        with connect(args) as client:
            return args.run(client, args) or 0
    except PredictionError as error:
        print(f"pyserving-client: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (UsageError, ReplayError, OutputError, OSError) as error:
        print(f"pyserving-client: {error}", file=sys.stderr)
        return EXIT_USAGE


# --- arguments ------------------------------------------------------------------------------


def build_parser(add_more: Callable[[Any, argparse.ArgumentParser, argparse.ArgumentParser],
                                    None]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyserving-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    connection = _connection_options()
    model = _model_options()

    predict = commands.add_parser("predict", parents=[connection, model],
                                  help="run a predict signature")
    add_input_options(predict)
    predict.add_argument("--output-filter", action="append", default=[], metavar="NAME",
                         help="return only these outputs (repeatable)")
    predict.add_argument("--out", type=Path, help="write the outputs to a .npz or .json file "
                         "(default: JSON on stdout)")
    predict.set_defaults(run=run_predict)

    for name, run in (("classify", run_classify), ("regress", run_regress)):
        command = commands.add_parser(name, parents=[connection, model],
                                      help=f"{name} tf.Examples given as JSON features")
        command.add_argument("--example", action="append", default=[], metavar="JSON",
                             help='one example, e.g. \'{"x": 2.0}\' (repeatable)')
        command.add_argument("--examples", type=Path, metavar="FILE",
                             help="a JSON list of examples, or JSON lines")
        command.add_argument("--context", metavar="JSON", help="features every example shares")
        command.set_defaults(run=run)

    metadata = commands.add_parser("metadata", parents=[connection, model],
                                   help="print the model's signatures")
    metadata.set_defaults(run=run_metadata)
    status = commands.add_parser("status", parents=[connection],
                                 help="print the state of each version")
    status.add_argument("--model", required=True)
    status.add_argument("--version", type=int)
    status.set_defaults(run=run_status)
    reload = commands.add_parser("reload", parents=[connection],
                                 help="replace the served models (HandleReloadConfigRequest)")
    reload.add_argument("--config", type=Path, required=True,
                        help="a text-format ModelServerConfig file")
    reload.set_defaults(run=run_reload)
    add_more(commands, connection, model)
    cli_rollout.add_command(commands)
    cli_logs.add_command(commands, connection)
    return parser


def _connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument("--target", default="localhost:8500",
                       help="server address (default: %(default)s)")
    group.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                       help="deadline of each call in seconds, retries included "
                            "(default: %(default)s)")
    group.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                       help="retries of an UNAVAILABLE call, with backoff (default: %(default)s)")
    group.add_argument("--tls", action="store_true", help="use TLS (with the system's roots "
                       "unless --ca-cert is given)")
    group.add_argument("--ca-cert", type=Path, help="PEM file of the CA(s) to trust; implies "
                       "--tls")
    group.add_argument("--client-cert", type=Path, help="PEM client certificate (mutual TLS)")
    group.add_argument("--client-key", type=Path, help="PEM client key (mutual TLS)")
    group.add_argument("--server-name", help="the name the server's certificate must carry, "
                       "when the target's host is not it")
    group.add_argument("--channel-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="any gRPC channel argument, e.g. grpc.lb_policy_name=round_robin")
    return options


def _model_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("model")
    group.add_argument("--model", required=True, help="the model's name")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--version", type=int, help="a version number (default: the latest)")
    choice.add_argument("--label", help="a version label, e.g. stable")
    group.add_argument("--signature", help="signature name (default: serving_default)")
    return options


def add_input_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                         help="an input as inline JSON (x=[[1.0],[2.0]]) or a file "
                              "(x=@x.npy, x=@x.json); repeatable")
    command.add_argument("--inputs", type=Path, metavar="FILE",
                         help="named inputs from an .npz or a JSON object")
    command.add_argument("--dtype", action="append", default=[], metavar="NAME=DTYPE",
                         help="cast an input to a numpy dtype, e.g. ids=int64")


def connect(args: argparse.Namespace) -> PredictionClient:
    tls = None
    if args.tls or args.ca_cert or args.client_cert or args.client_key:
        tls = TLS(root_certificates=args.ca_cert, certificate_chain=args.client_cert,
                  private_key=args.client_key, server_name=args.server_name)
        try:
            tls.credentials()
        except ValueError as error:
            raise UsageError(str(error)) from None
    extra = tuple(_channel_argument(item) for item in args.channel_arg)
    return PredictionClient(args.target, credentials=tls, timeout=args.timeout,
                            retries=args.retries, channel_options=ChannelOptions(extra=extra))


def _channel_argument(item: str) -> tuple[str, Any]:
    key, separator, value = item.partition("=")
    if not separator:
        raise UsageError(f"--channel-arg {item!r}: expected KEY=VALUE")
    try:
        return key.strip(), int(value)
    except ValueError:
        return key.strip(), value.strip()


def read_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The inputs of --inputs, --input and --dtype, as TensorProtos."""
    inputs: dict[str, np.ndarray] = {}
    try:
        if args.inputs:
            inputs.update(array_files.load_inputs(args.inputs))
        for item in args.input:
            name, separator, value = item.partition("=")
            if not separator:
                raise UsageError(f"--input {item!r}: expected NAME=VALUE")
            inputs[name] = _input_value(value)
        for item in args.dtype:
            name, _, dtype = item.partition("=")
            if name not in inputs:
                raise UsageError(f"--dtype {item!r}: no input named {name!r}")
            inputs[name] = np.asarray(inputs[name]).astype(dtype)
        protos = {name: tensor_proto(value) for name, value in inputs.items()}
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    if not protos:
        raise UsageError("no inputs: pass --input NAME=VALUE or --inputs FILE")
    return protos


def _input_value(text: str) -> np.ndarray:
    if text.startswith("@"):
        path = Path(text[1:])
        if path.suffix == ".npy":
            return array_files.load_npy(path)
        return as_tensor_array(json.loads(path.read_text()))
    return as_tensor_array(json.loads(text))


def read_examples(args: argparse.Namespace) -> list[dict[str, Any]]:
    try:
        examples = [json.loads(text) for text in args.example]
        if args.examples:
            text = args.examples.read_text()
            if args.examples.suffix == ".json":
                examples.extend(json.loads(text))
            else:
                examples.extend(json.loads(line) for line in text.splitlines() if line.strip())
    except ValueError as error:
        raise UsageError(f"bad example JSON: {error}") from None
    if not examples or not all(isinstance(e, dict) for e in examples):
        raise UsageError("pass examples as JSON objects: --example JSON or --examples FILE")
    return examples


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout)
    sys.stdout.write("\n")


# --- commands -------------------------------------------------------------------------------


def run_predict(client: PredictionClient, args: argparse.Namespace) -> int:
    outputs = client.predict(args.model, read_inputs(args), version=args.version,
                             label=args.label, signature=args.signature,
                             output_filter=args.output_filter or None)
    if args.out is not None and args.out.suffix == ".npz":
        array_files.save_npz(args.out, outputs)
        return 0
    text = json.dumps({name: array_files.jsonable(array) for name, array in outputs.items()})
    if args.out is not None:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


def run_classify(client: PredictionClient, args: argparse.Namespace) -> int:
    result = client.classify(args.model, read_examples(args), context=_context(args),
                             version=args.version, label=args.label, signature=args.signature)
    print_json({"results": [[list(pair) for pair in row] for row in result.as_lists()]})
    return 0


def run_regress(client: PredictionClient, args: argparse.Namespace) -> int:
    values = client.regress(args.model, read_examples(args), context=_context(args),
                            version=args.version, label=args.label, signature=args.signature)
    print_json({"results": array_files.jsonable(values)})
    return 0


def _context(args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        return None if args.context is None else json.loads(args.context)
    except ValueError as error:
        raise UsageError(f"bad --context JSON: {error}") from None


def run_metadata(client: PredictionClient, args: argparse.Namespace) -> int:
    """TF Serving REST's metadata answer: {"model_spec": ..., "metadata": ...}."""
    metadata = client.metadata(args.model, version=args.version, label=args.label)
    print_json({
        "model_spec": {"name": metadata.name, "signature_name": "",
                       "version": str(metadata.version)},
        "metadata": {"signature_def": json_format.MessageToDict(
            metadata.signature_def_map, preserving_proto_field_name=True)}})
    return 0


def run_status(client: PredictionClient, args: argparse.Namespace) -> int:
    """TF Serving REST's status answer: {"model_version_status": [...]}."""
    statuses = client.status(args.model, version=args.version)
    print_json({"model_version_status": [
        {"version": str(s.version), "state": s.state,
         "status": {"error_code": s.error_code, "error_message": s.error_message}}
        for s in statuses]})
    return 0


def run_reload(client: PredictionClient, args: argparse.Namespace) -> int:
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(args.config.read_text(), config)
    except text_format.ParseError as error:
        raise UsageError(f"{args.config}: {error}") from None
    client.reload_config(config)
    return 0


if __name__ == "__main__":
    # Run the importable module's main: cli_bulk imports that one, so both share UsageError.
    from pyserving.client.cli import main as cli_main

    sys.exit(cli_main())
