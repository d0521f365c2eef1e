"""Padding of batches: up to an allowed batch size, and of differing non-batch dimensions
(``pad_variable_length_inputs``), both with the first element as TF Serving pads."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def round_up(size: int, allowed: Sequence[int]) -> int:
    """The smallest allowed batch size that holds ``size`` rows (``size`` without any)."""
    for candidate in allowed:
        if candidate >= size:
            return candidate
    return size


def pad_to_common_shape(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Pad every array to the largest size of each non-batch dimension, with its first
    element (TF Serving's AddPadding)."""
    target = np.max([part.shape[1:] for part in parts], axis=0)
    padded = []
    for part in parts:
        widths = [(0, 0)] + [(0, int(t - s)) for t, s in zip(target, part.shape[1:], strict=False)]
        if any(w for _, w in widths):
            fill = part.flat[0] if part.size else 0
            padded.append(np.pad(part, widths, constant_values=fill)
                          if part.dtype != object else _pad_objects(part, widths, fill))
        else:
            padded.append(part)
    return padded


def _pad_objects(part: np.ndarray, widths: list[tuple[int, int]], fill: object) -> np.ndarray:
    shape = tuple(s + w for s, (_, w) in zip(part.shape, widths, strict=False))
    out = np.empty(shape, dtype=object)
    out.fill(fill)
    out[tuple(slice(0, s) for s in part.shape)] = part
    return out
