"""Bulk inference: a large input streamed through Predict in batches, with a bounded number
of requests in flight and the results in input order.

    for batch in predict_batches(client, "model", load_npz("big.npz"), batch_size=64):
        consume(batch.start, batch.outputs)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyserving.client.sync_client import PredictionClient


@dataclass(frozen=True)
class Batch:
    """The outputs of input rows ``start:stop``, batch number ``index``."""

    index: int
    start: int
    stop: int
    outputs: dict[str, np.ndarray]


def count_rows(inputs: Mapping[str, Any]) -> int:
    """The dimension 0 all inputs share."""
    sizes = {name: (np.shape(value) or (None,))[0] for name, value in inputs.items()}
    distinct = set(sizes.values())
    rows = distinct.pop() if len(distinct) == 1 else None
    if rows is None:
        raise ValueError(f"inputs must share dimension 0 (their rows): {sizes}")
    return rows


def count_batches(rows: int, batch_size: int) -> int:
    return -(-rows // batch_size)


def predict_batches(client: PredictionClient, model: str, inputs: Mapping[str, np.ndarray], *,
                    batch_size: int = 64, in_flight: int = 8, version: int | None = None,
                    label: str | None = None, signature: str | None = None,
                    output_filter: Sequence[str] | None = None,
                    skip: Container[int] = frozenset(),
                    timeout: float | None = None) -> Iterator[Batch]:
    """Yield each batch's outputs in input order, keeping at most ``in_flight`` requests
    running; batches whose index is in ``skip`` are not sent. A failed batch raises its
    PredictionError (the batches before it have been yielded)."""
    if batch_size < 1 or in_flight < 1:
        raise ValueError("batch_size and in_flight must be at least 1")
    rows = count_rows(inputs)
    todo = (index for index in range(count_batches(rows, batch_size)) if index not in skip)

    def run(start: int, stop: int) -> dict[str, np.ndarray]:
        batch = {name: np.asarray(value[start:stop]) for name, value in inputs.items()}
        return client.predict(model, batch, version=version, label=label, signature=signature,
                              output_filter=output_filter, timeout=timeout)

    pending: deque[tuple[int, int, int, Future]] = deque()
    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="batch-predict")

    def submit_next() -> None:
        index = next(todo, None)
        if index is not None:
            start, stop = index * batch_size, min((index + 1) * batch_size, rows)
            pending.append((index, start, stop, pool.submit(run, start, stop)))

    try:
        for _ in range(in_flight):
            submit_next()
        while pending:
            index, start, stop, future = pending.popleft()
            outputs = future.result()
            submit_next()
            yield Batch(index, start, stop, outputs)
    finally:
        for *_, future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def predict_all(client: PredictionClient, model: str, inputs: Mapping[str, np.ndarray],
                **options: Any) -> dict[str, np.ndarray]:
    """predict_batches' outputs concatenated on dimension 0."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in predict_batches(client, model, inputs, **options):
        for name, array in batch.outputs.items():
            parts.setdefault(name, []).append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}
