"""``pyserving-client rollout``: a model's rollout status (GET /v1/models/{m}/rollout on the
server's REST port) as a table, or as the server's JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://localhost:8501"
EXIT_FAILED = 1


class RolloutStatusError(Exception):
    """The server answered with an error, or could not be reached."""


def add_command(commands: Any) -> None:
    rollout = commands.add_parser(
        "rollout", help="show a model's rollout: split, shadow and guard (REST port)")
    rollout.add_argument("--model", required=True, help="the model's name")
    rollout.add_argument("--url", default=DEFAULT_URL,
                         help="the server's REST address (default: %(default)s)")
    rollout.add_argument("--timeout", type=float, default=10.0,
                         help="seconds to wait for the answer (default: %(default)s)")
    rollout.add_argument("--json", action="store_true", help="print the JSON document")
    rollout.set_defaults(run=run_rollout, rest_only=True)


def fetch_status(url: str, model: str, timeout: float) -> dict[str, Any]:
    """The rollout status document of ``model``; raises RolloutStatusError when there is none."""
    address = f"{url.rstrip('/')}/v1/models/{urllib.parse.quote(model, safe='')}/rollout"
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            message = body.decode("utf-8", "replace") or error.reason
        raise RolloutStatusError(f"HTTP {error.code}: {message}") from None
    except urllib.error.URLError as error:
        raise RolloutStatusError(f"cannot reach {address}: {error.reason}") from None


def run_rollout(_: object, args: argparse.Namespace) -> int:
    try:
        status = fetch_status(args.url, args.model, args.timeout)
    except RolloutStatusError as error:
        print(f"pyserving-client: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        json.dump(status, sys.stdout, indent=2)
        print()
    else:
        print(render_table(status))
    return 0


def render_table(status: dict[str, Any]) -> str:
    """The status document as text for a terminal."""
    sticky = status.get("sticky_metadata_key")
    lines = [f"model {status['model_name']}" + (f" (sticky on {sticky})" if sticky else "")]
    rows = [("ARM", "VERSION", "WEIGHT", "REQUESTS", "ERRORS", "ERROR RATE")]
    for arm in status["arms"]:
        weight = f"{arm['weight']:g}" + (" (tripped)" if arm.get("tripped") else "")
        rows.append((_target(arm), _text(arm["version"]), weight, str(arm["requests"]),
                     str(arm["errors"]), _rate(arm["errors"], arm["requests"])))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(width)
                        for cell, width in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    shadow = status.get("shadow")
    if shadow:
        agreement = shadow.get("argmax_agreement")
        lines.append(
            f"shadow {_target(shadow)} (version {_text(shadow['version'])}), fraction "
            f"{shadow['fraction']:g}: mirrored {shadow['mirrored']}, compared "
            f"{shadow['compared']}, dropped {shadow['dropped']}, mismatches "
            f"{shadow['mismatches']}, errors {shadow['errors']}, max |diff| "
            f"{shadow['max_abs_diff']:g}"
            + ("" if agreement is None else f", argmax agreement {agreement:.1%}"))
    guard = status["guard"]
    lines.append("guard: " + (f"TRIPPED: {guard['reason']}" if guard["tripped"] else "ok"))
    return "\n".join(lines)


def _target(entry: dict[str, Any]) -> str:
    return f"label {entry['label']}" if entry["label"] else f"version {entry['version']}"


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _rate(errors: int, requests: int) -> str:
    return f"{errors / requests:.1%}" if requests else "-"
