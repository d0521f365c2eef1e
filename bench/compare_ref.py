"""This tree against git refs of the same repository: the same workloads, one table of ratios.

    .venv/bin/python bench/compare_ref.py [--ref 7fa3604] [--ref main] [--short]

Each ref is exported with ``git archive`` into a temp dir and served by the base interpreter
(which has every dependency) with ``PYTHONPATH`` pointing at a tree of symlinks laid out as the
ref's ``[tool.setuptools] package-dir`` says: the ref's own code, built in no time and nothing
installed. The working tree (label ``tree``) is served the same way. Every server is its own
process; the load comes from other processes (bench/loadgen.py: grpc.aio clients sending a
pre-serialised Predict; aiohttp clients for REST).

Workloads (32 clients unless ``--concurrency``): the tiny model (half_plus_two) and an MLP of 4
Dense layers of 1024, each unbatched (server defaults) and batched (``--enable_batching`` with
bench/workloads.py's DEFAULT_BATCHING), gRPC Predict; REST TF Serving JSON, 1 row, on the
unbatched tiny server; and, per workload, a bare grpc.aio echo server on the same stubs
answering that workload's request (the transport's floor). The servers of one workload run at
once and are measured ABAB-interleaved (the order rotated every round); the table shows
medians over rounds. TensorFlow's own CPU per row (``Servable.run`` back to back in this
process: one row for an unbatched row of the table, a full batch for a batched one) is
measured in the same run, and with it each row's ceiling: a request cannot cost less than the
echo server's request plus its row's TensorFlow CPU, in series.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
import loadgen
import servers
import tomllib
import workloads

REPO = Path(__file__).resolve().parent.parent
TREE = "tree"  # the working tree's label
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


@dataclass(frozen=True)
class Config:
    """One server configuration every variant runs: a row group of the table."""

    name: str
    workload: str  # "tiny" or "mlp"
    batched: bool
    rest: bool = False  # also serves REST (the REST row uses this server)


CONFIGS = (Config("tiny, unbatched", "tiny", False, rest=True),
           Config("tiny, batched", "tiny", True),
           Config("MLP 1024x4, unbatched", "mlp", False),
           Config("MLP 1024x4, batched", "mlp", True))
REST_ROW = "REST JSON 1-row (tiny)"


# --------------------------------------------------------------------------- building refs

def export_ref(ref: str, root: Path) -> Path:
    """``ref``'s files under ``root/src``; returns the PYTHONPATH entry that imports them."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout.strip()
    source = root / sha[:12] / "src"
    if not source.exists():
        source.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", sha], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    return import_root(source, root / sha[:12] / "importroot")


def import_root(source: Path, target: Path) -> Path:
    """A directory of symlinks that makes ``import pyserving.server`` find ``source/server``."""
    setup = tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"]
    if target.exists():
        shutil.rmtree(target)
    for package, folder in setup["package-dir"].items():
        link = target.joinpath(*package.split("."))
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source / folder)
    return target


# --------------------------------------------------------------------------- the server process

def serve(spec: dict[str, Any]) -> None:
    """Child process entry (``--serve JSON``): a ModelServer of whichever pyserving is on the
    path; prints its ports as one JSON line, stops when stdin closes."""
    from pyserving.server import ModelServer, ServerOptions

    options = ServerOptions(port=0, model_name=spec["model_name"],
                            model_base_path=spec["base_path"], **spec["options"])
    server = ModelServer(options, host="127.0.0.1").start()
    print(json.dumps({"grpc_port": server.port, "rest_port": server.rest_port}), flush=True)
    sys.stdin.read()
    server.stop(grace=None)


@dataclass
class Server:
    label: str
    process: subprocess.Popen
    grpc_port: int
    rest_port: int | None


def start_server(label: str, import_path: Path, config: Config, workload: workloads.Workload,
                 scratch: Path) -> Server:
    options: dict[str, Any] = {}
    if config.batched:
        batching = workloads.DEFAULT_BATCHING[config.workload]
        parameters = scratch / f"batching_{config.workload}.txt"
        parameters.write_text(batching.parameters_text())
        options.update(enable_batching=True, batching_parameters_file=str(parameters),
                       grpc_max_threads=batching.grpc_threads,
                       tensorflow_inter_op_parallelism=batching.inter_op)
    if config.rest:
        options["rest_api_port"] = free_port()
    spec = {"model_name": workload.model_name, "base_path": workload.base_path,
            "options": options}
    # The server process writes to it until it stops, long after this function returns.
    log = open(scratch / f"{harness.log_name(label)}.log", "a", encoding="utf-8")  # noqa: SIM115
    env = dict(os.environ, PYTHONPATH=str(import_path), TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen([BASE_PYTHON, str(Path(__file__).resolve()), "--serve",
                                json.dumps(spec)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=log, env=env, cwd=scratch,
                               text=True)
    for line in process.stdout or ():  # the ports line; anything a library printed before
        if line.startswith('{"grpc_port"'):
            ports = json.loads(line)
            break
    else:
        raise RuntimeError(f"{label} did not start; see {log.name}")
    return Server(label, process, ports["grpc_port"], ports["rest_port"])


def stop_server(server: Server) -> None:
    if server.process.stdin:
        server.process.stdin.close()
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --------------------------------------------------------------------------- REST load

@dataclass(frozen=True)
class RestLoad:
    url: str
    server_pid: int
    body: bytes
    concurrency: int
    start_at: float
    seconds: float


def serve_rest_load(conn: Any) -> None:
    """Load process entry: run each RestLoad received on one aiohttp session."""
    loop = asyncio.new_event_loop()
    try:
        while (spec := conn.recv()) is not None:
            conn.send(loop.run_until_complete(_rest_measure(spec)))
    finally:
        loop.close()


async def _rest_measure(spec: RestLoad) -> loadgen.LoadResult:
    import aiohttp

    result = loadgen.LoadResult(elapsed=spec.seconds)
    marks: dict[str, float | None] = {}
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client() -> None:
            while (began := time.perf_counter()) < spec.start_at + spec.seconds:
                async with session.post(spec.url, data=spec.body) as response:
                    body = await response.read()
                if response.status != 200:
                    result.errors.append(f"HTTP {response.status}: {body[:200]!r}")
                    if len(result.errors) > 100:
                        return
                elif began >= spec.start_at:
                    result.latencies.append(time.perf_counter() - began)
                    result.sample_response = body

        await asyncio.gather(loadgen._cpu_marks(spec.server_pid, spec.start_at,
                                                spec.start_at + spec.seconds, marks),
                             *(client() for _ in range(spec.concurrency)))
    result.server_cpu = loadgen._difference(marks, "server")
    result.machine_cpu = loadgen._difference(marks, "machine")
    result.client_cpu = loadgen._difference(marks, "client") or 0.0
    return result


# --------------------------------------------------------------------------- measuring

@dataclass
class Samples:
    rps: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, cell: harness.Cell) -> None:
        self.rps.append(cell.requests_per_second)
        self.p99.append(cell.p99_ms)
        if cell.server_cpu_us is not None:
            self.cpu_us.append(cell.server_cpu_us)
        self.errors += cell.errors

    def median(self, name: str) -> float:
        values = getattr(self, name)
        return statistics.median(values) if values else float("nan")


def grpc_cell(conns: list[Any], server: Server, request: bytes, args: Any,
              check: Any) -> harness.Cell:
    running = harness.Running(server.label, server.process, None, server.grpc_port)
    return harness.measure_cell(running, conns, request, args.concurrency, args.seconds,
                                args.warmup, check)


def rest_cell(conn: Any, server: Server, body: bytes, args: Any) -> harness.Cell:
    start_at = time.perf_counter() + harness.CONNECT_SECONDS + args.warmup
    conn.send(RestLoad(f"http://127.0.0.1:{server.rest_port}/v1/models/half_plus_two:predict",
                       server.process.pid, body, args.concurrency, start_at, args.seconds))
    result = conn.recv()
    if result.errors:
        print(f"  REST {server.label}: {len(result.errors)} errors, first: {result.errors[0]}",
              file=sys.stderr)
    return harness.to_cell(result, args.seconds)


def tf_cpu_us(model: workloads.InProcessModel, seconds: float, rows: int = 1) -> float:
    """Process CPU per row of back-to-back Servable.run calls on ``rows`` rows (fastest of 3
    blocks): one row for an unbatched server, a full batch for a batched one."""
    import numpy as np

    with model.servable() as servable:
        signature = servable.signatures["serving_default"]
        batch = np.repeat(np.asarray(model.workload.row), rows, axis=0)
        feeds = [(signature.inputs["x"].name, batch)]
        fetches = [signature.outputs["y"].name]
        for _ in range(20):
            servable.run(feeds, fetches)
        best = float("inf")
        for _ in range(3):
            calls, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
            while time.perf_counter() - wall0 < seconds / 3:
                servable.run(feeds, fetches)
                calls += 1
            best = min(best, (time.process_time() - cpu0) / calls / rows * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--ref", action="append", help="git ref to compare (repeatable; "
                        "default: 7fa3604 and main)")
    parser.add_argument("--seconds", type=float, default=3.0, help="window per cell")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--load-processes", type=int, default=1)
    parser.add_argument("--configs", default="all",
                        help="comma-separated subset of: tiny, tiny-batched, mlp, mlp-batched")
    parser.add_argument("--short", action="store_true", help="smoke run: 1 s cells, 2 rounds")
    parser.add_argument("--profile", metavar="CONFIG",
                        help="instead of comparing: load this tree's server of CONFIG (tiny, "
                        "tiny-batched, mlp, mlp-batched) and profile it with py-spy: a "
                        "flamegraph SVG (--profile-out) and the top frames")
    parser.add_argument("--profile-out", default="profile.svg")
    parser.add_argument("--native", action="store_true",
                        help="with --profile: sample native frames too (gRPC's Cython, TF)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(),
                                                        "pyserving-compare-ref"))
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve))
        return
    if args.short:
        args.seconds, args.rounds, args.warmup = 1.0, 2, 0.3
    cache = Path(args.cache)
    if args.profile:
        profile(args, select_configs(args.profile)[0], import_root(REPO, cache / "tree-importroot"))
        return
    refs = args.ref or ["7fa3604", "main"]
    started = time.time()
    variants = {ref: export_ref(ref, cache) for ref in refs}
    variants[TREE] = import_root(REPO, cache / "tree-importroot")
    configs = select_configs(args.configs)
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="compare_ref_") as scratch_name:
        scratch = Path(scratch_name)
        table = run(args, variants, configs, scratch, context)
    print_table(args, refs, table, time.time() - started)


def select_configs(text: str) -> list[Config]:
    names = {"tiny": CONFIGS[0], "tiny-batched": CONFIGS[1], "mlp": CONFIGS[2],
             "mlp-batched": CONFIGS[3]}
    if text == "all":
        return list(CONFIGS)
    return [names[name.strip()] for name in text.split(",")]


@dataclass
class Table:
    rows: dict[str, dict[str, Samples]] = field(default_factory=dict)  # row -> variant -> cells
    tf_cpu_us: dict[str, float] = field(default_factory=dict)  # row -> TF CPU per row
    echo: dict[str, Samples] = field(default_factory=dict)  # workload -> echo server cells


def run(args: Any, variants: dict[str, Path], configs: list[Config], scratch: Path,
        context: Any) -> Table:
    table = Table()
    load_processes, load_conns = harness.start_load_processes(context, args.load_processes)
    rest_conn, rest_child = context.Pipe()
    rest_process = context.Process(target=serve_rest_load, args=(rest_child,), daemon=True)
    rest_process.start()
    try:
        for workload_name in dict.fromkeys(config.workload for config in configs):
            workload = workloads.prepare(workload_name, scratch / "models")
            model = workloads.InProcessModel(workload, inter_op=0)
            reference = model.reference()
            for config in (c for c in configs if c.workload == workload_name):
                rows = workloads.DEFAULT_BATCHING[workload_name].max_batch_size \
                    if config.batched else 1
                table.tf_cpu_us[config.name] = tf_cpu_us(model, 1.5, rows)
            model.stop()
            check = workloads.response_checker(reference)
            for config in (c for c in configs if c.workload == workload_name):
                measure_config(args, variants, config, workload, reference, check, scratch,
                               table, load_conns, rest_conn)
    finally:
        rest_conn.send(None)
        rest_process.join(10)
        harness.stop_load_processes(load_processes, load_conns)
    return table


def measure_config(args: Any, variants: dict[str, Path], config: Config,
                   workload: workloads.Workload, reference: workloads.Reference, check: Any,
                   scratch: Path, table: Table, load_conns: list[Any], rest_conn: Any) -> None:
    print(f"{config.name}: starting {len(variants)} servers", file=sys.stderr, flush=True)
    running = [start_server(f"{label} {config.name}", path, config, workload, scratch)
               for label, path in variants.items()]
    echo = None
    if config.workload not in table.echo:  # the transport's floor for this workload's request
        spec = servers.ServerSpec("echo-aio", workload.base_path, workload.model_name, 8, 0,
                                  reference.canned_response, str(scratch / "echo.log"))
        echo = harness.start_servers(multiprocessing.get_context("spawn"), [("echo", spec)])[0]
    rows = table.rows.setdefault(config.name, {label: Samples() for label in variants})
    echo_cells = table.echo.setdefault(config.workload, Samples()) if echo is not None else None
    rest_rows = table.rows.setdefault(REST_ROW, {label: Samples() for label in variants}) \
        if config.rest else None
    labels = list(variants)
    body = b'{"instances": [[2.0]]}'
    try:
        for round_index in range(args.rounds):
            shift = round_index % len(running)
            order = running[shift:] + running[:shift]
            for label, server in ((labels[running.index(s)], s) for s in order):
                rows[label].add(grpc_cell(load_conns, server, workload.request, args, check))
                if echo is not None and echo_cells is not None and server is order[0]:
                    echo_cells.add(harness.measure_cell(echo, load_conns, workload.request,
                                                        args.concurrency, args.seconds,
                                                        args.warmup, check))
                if rest_rows is not None:
                    rest_rows[label].add(rest_cell(rest_conn, server, body, args))
            print(f"  round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for server in running:
            stop_server(server)
        if echo is not None:
            harness.stop_servers([echo])


def profile(args: Any, config: Config, import_path: Path) -> None:
    """py-spy on this tree's server under load: one window for the flamegraph, one for the
    raw stacks summarised here (self samples per frame, and samples per frame anywhere)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    context = multiprocessing.get_context("spawn")
    seconds = max(args.seconds, 5.0)
    with tempfile.TemporaryDirectory(prefix="compare_ref_") as scratch_name:
        scratch = Path(scratch_name)
        workload = workloads.prepare(config.workload, scratch / "models")
        model = workloads.InProcessModel(workload, inter_op=0)
        check = workloads.response_checker(model.reference())
        model.stop()
        server = start_server(f"{TREE} {config.name}", import_path, config, workload, scratch)
        processes, conns = harness.start_load_processes(context, args.load_processes)
        raw = scratch / "stacks.txt"
        try:
            grpc_cell(conns, server, workload.request, args, check)  # warm up
            for output, fmt in ((args.profile_out, "flamegraph"), (str(raw), "raw")):
                spy = subprocess.Popen([py_spy, "record", "--pid", str(server.process.pid),
                                        "--duration", str(int(seconds)), "--rate", "250",
                                        "--format", fmt, "--output", output,
                                        # native stacks need the process stopped to read
                                        *(["--native"] if args.native else ["--nonblocking"])],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                window = argparse.Namespace(**{**vars(args), "seconds": seconds - 0.5,
                                               "warmup": 0.3})
                cell = grpc_cell(conns, server, workload.request, window, check)
                _, errors = spy.communicate(timeout=seconds + 30)
                if spy.returncode:
                    raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')}")
        finally:
            harness.stop_load_processes(processes, conns)
            stop_server(server)
        print(f"{config.name}, {args.concurrency} clients: {cell.requests_per_second:,.0f} "
              f"req/s while sampled; flamegraph: {args.profile_out}")
        print_top_frames(raw.read_text())


def print_top_frames(collapsed: str, count: int = 15) -> None:
    """Top frames of py-spy's raw (collapsed) stacks: by self samples and by samples with
    the frame anywhere on the stack."""
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        weight = int(samples)
        total += weight
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + weight
        for frame in set(frames[1:]):  # the first is the thread
            anywhere[frame] = anywhere.get(frame, 0) + weight
    for title, table in (("self", own), ("on the stack", anywhere)):
        print(f"\ntop frames by samples {title} (of {total}):")
        for frame, weight in sorted(table.items(), key=lambda item: -item[1])[:count]:
            print(f"  {weight / total:6.1%}  {frame[:140]}")


def print_table(args: Any, refs: list[str], table: Table, elapsed: float) -> None:
    import grpc

    columns = [*refs, TREE]
    print(f"\npyserving {TREE} against {', '.join(refs)}: {args.concurrency} clients, "
          f"{args.rounds} rounds x {args.seconds:g} s per cell\n(ABAB, medians); "
          f"{os.cpu_count()} cores; Python {sys.version.split()[0]}, grpcio {grpc.__version__}")
    head = "| workload | " + " | ".join(f"{c} req/s" for c in columns)
    head += " | " + " | ".join(f"{TREE}/{r}" for r in refs)
    head += " | " + " | ".join(f"p99 ms {c}" for c in columns)
    head += f" | srv CPU us/req {TREE} | TF CPU us/row | {TREE}/echo |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for workload, echo in table.echo.items():
        print(f"| bare grpc.aio echo ({workload} request) | {echo.median('rps'):,.0f} |"
              + " |" * (head.count("|") - 3))
    for row, cells in table.rows.items():
        rps = {c: cells[c].median("rps") for c in columns}
        line = f"| {row} | " + " | ".join(f"{rps[c]:,.0f}" for c in columns)
        line += " | " + " | ".join(f"{rps[TREE] / rps[r]:.2f}x" for r in refs)
        line += " | " + " | ".join(f"{cells[c].median('p99'):.1f}" for c in columns)
        line += f" | {cells[TREE].median('cpu_us'):.0f}"
        workload = "mlp" if row.startswith("MLP") else "tiny"
        tf_cpu = table.tf_cpu_us.get(row)
        line += f" | {tf_cpu:.0f}" if tf_cpu and tf_cpu >= 10 else \
            f" | {tf_cpu:.1f}" if tf_cpu else " | "
        echo = table.echo.get(workload)
        line += f" | {rps[TREE] / echo.median('rps'):.2f}x |" \
            if echo is not None and row != REST_ROW else " | |"
        print(line)
        errors = {c: cells[c].errors for c in columns if cells[c].errors}
        if errors:
            print(f"  errors in {row}: {errors}")
    print_ceilings(table)
    print(f"(total run time {elapsed:.0f} s)")


def print_ceilings(table: Table) -> None:
    """A request cannot cost less than the echo server's request of the same workload plus
    its row's share of TensorFlow's CPU (one row alone unbatched, a full batch's per-row cost
    batched), in series: 1 / (1/echo + TF per row)."""
    lines = []
    for config in CONFIGS:
        echo, tf_cpu = table.echo.get(config.workload), table.tf_cpu_us.get(config.name)
        cells = table.rows.get(config.name)
        if echo is None or not tf_cpu or cells is None:
            continue
        echo_rps = echo.median("rps")
        ceiling = 1e6 / (1e6 / echo_rps + tf_cpu)
        tree = cells[TREE].median("rps")
        lines.append(f"  {config.name}: 1 / (1/{echo_rps:,.0f} + {tf_cpu:.1f} us) = "
                     f"{ceiling:,.0f} req/s;\n    {TREE} reaches {tree:,.0f} = "
                     f"{tree / ceiling:.2f} of it ({tree / echo_rps:.2f}x echo; echo "
                     f"{echo.median('cpu_us'):.0f} us of server CPU per request)")
    if lines:
        print("\nCeilings (echo of the workload's request + TF CPU per row, in series):")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
