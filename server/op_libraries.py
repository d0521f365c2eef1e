"""Ops beyond core TensorFlow: the op packages TF Serving links in, and --custom_op_libraries.

``tensorflow_model_server`` is linked with TensorFlow Text's and TensorFlow Decision Forests'
ops (tensorflow_serving/model_servers/BUILD, ``SUPPORTED_TENSORFLOW_OPS``), so a SavedModel that
tokenizes inside its graph serves there unchanged. TensorFlow registers ops per process, when
their library is loaded; pyserving loads the same ones at start-up, before any model: the
installed op packages (``pip install 'pyserving[text]'``), then each ``--custom_op_libraries``
file (as ``tf.load_op_library`` loads it), which TF Serving could only take by a rebuild.
Importing tensorflow_text 2.21.1 once TensorFlow is in costs 0.2 s and 130 MB of resident
memory (its 22 op libraries alone: 0.08 s, 100 MB) and registers its 38 ops.

TensorFlow Decision Forests has no build for TensorFlow 2.21: its newest release, 1.12.0,
requires ``tensorflow==2.19.0``, and its inference library fails to load into TensorFlow 2.21
(``undefined symbol: _ZN3tsl7strings6StrCat...``); a TF-DF model's load error says so.

A model that needs an op no loaded library registers fails with TensorFlow's own error
("Op type not registered 'X' in binary running on ..."); ``with_op_hint`` appends which extra or
flag would bring the op.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import re
from dataclasses import dataclass

from pyserving.server.errors import ServingError, from_tensorflow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpPackage:
    """A Python package whose import registers ops TF Serving's binary has."""

    module: str
    distribution: str
    title: str
    ops: frozenset[str]  # what its import registers (tests/test_op_libraries.py checks it)
    prefixes: tuple[str, ...]  # namespaces of its ops, for ops added after ``ops`` was listed
    install: str  # how to bring it, for the hint

    def owns(self, op: str) -> bool:
        return op in self.ops or op.startswith(self.prefixes)


TEXT = OpPackage(
    module="tensorflow_text", distribution="tensorflow-text", title="TensorFlow Text",
    # The ops tensorflow_text 2.21.1 registers on import: TensorFlow's op list after it, less
    # the list before it.
    ops=frozenset({
        "CaseFoldUTF8", "ConstrainedSequence", "FastBertNormalize",
        "FastWordpieceTokenizeWithOffsets", "FindSourceOffsets", "MaxSpanningTree",
        "NormalizeUTF8", "NormalizeUTF8WithOffsetsMap", "PhraseTokenize",
        "RegexSplitWithOffsets", "RougeL", "SentenceFragments", "SentenceFragmentsV2",
        "SentencepieceDetokenizeOp", "SentencepieceIdToStringOp", "SentencepieceOp",
        "SentencepieceStringToIdOp", "SentencepieceTokenizeOp",
        "SentencepieceTokenizeWithOffsetsOp", "SentencepieceVocabSizeOp",
        "SplitMergeTokenizeWithOffsets", "TFText>BoiseTagsToOffsets",
        "TFText>ByteSplitByOffsets", "TFText>ByteSplitWithOffsets",
        "TFText>FastSentencepieceDetokenize", "TFText>FastSentencepieceTokenize",
        "TFText>FastWordpieceDetokenize", "TFText>NgramsStringJoin", "TFText>OffsetsToBoiseTags",
        "TFText>PhraseDetokenize", "TFText>RoundRobinGenerateMasks", "TFText>RoundRobinTrim",
        "TFText>Utf8Binarize", "TFText>WhitespaceTokenizeWithOffsetsV2", "TokenizerFromLogits",
        "UnicodeScriptTokenizeWithOffsets", "WhitespaceTokenizeWithOffsets",
        "WordpieceTokenizeWithOffsets",
    }),
    prefixes=("TFText>",),
    install="install pyserving's text extra (pip install 'pyserving[text]', tensorflow-text "
            "for TensorFlow 2.21); pyserving registers its ops at start-up",
)

DECISION_FORESTS = OpPackage(
    module="tensorflow_decision_forests", distribution="tensorflow-decision-forests",
    title="TensorFlow Decision Forests",
    # Every op in tensorflow-decision-forests 1.12.0's inference.so and training.so begins so.
    ops=frozenset(), prefixes=("SimpleML", "Yggdrasil"),
    install="tensorflow-decision-forests has no build for TensorFlow 2.21 (1.12.0, the newest, "
            "requires tensorflow==2.19.0), so pyserving has no extra for it; an inference op "
            "library built against TensorFlow 2.21 can be loaded with --custom_op_libraries",
)

OP_PACKAGES = (TEXT, DECISION_FORESTS)

_UNREGISTERED_OP = re.compile(r"Op type not registered '([^']+)'")


def load_op_libraries(custom_op_libraries: str = "") -> list[str]:
    """Register the ops of the installed op packages, then of each comma-separated library
    file; returns what is active, as logged. A library that cannot be loaded raises the
    ServingError that fails start-up; a package that is installed but fails to import is
    logged and skipped (the models that need it fail to load, with the hint)."""
    active = [package for package in map(_import_package, OP_PACKAGES) if package]
    paths = filter(None, (part.strip() for part in custom_op_libraries.split(",")))
    active.extend(_load_library(os.path.abspath(path)) for path in paths)
    log.info("op libraries beyond core TensorFlow: %s", "; ".join(active) or "none")
    return active


def _import_package(package: OpPackage) -> str | None:
    try:
        importlib.import_module(package.module)
    except Exception as error:  # an op library built for another TensorFlow raises anything
        if isinstance(error, ModuleNotFoundError) and error.name == package.module:
            return None  # not installed
        log.warning("%s is installed but cannot be imported; its ops are not registered: %s",
                    package.distribution, error)
        return None
    try:
        version = importlib.metadata.version(package.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    return f"{package.title} ({package.distribution} {version})"


def _load_library(path: str) -> str:
    """tf.load_op_library without the Python wrappers it generates, which pyserving never
    calls: the library is loaded (its ops and kernels registered) and its op list read."""
    import tensorflow as tf
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session

    try:
        handle = pywrap_tf_session.TF_LoadLibrary(path)
    except tf.errors.OpError as error:  # dlopen's text: missing file, undefined symbol, ...
        failure = from_tensorflow(error)
        raise ServingError(failure.code, f"--custom_op_libraries: cannot load {path}: "
                                         f"{failure.message}") from None
    try:
        ops = op_def_pb2.OpList.FromString(pywrap_tf_session.TF_GetOpList(handle)).op
    finally:
        pywrap_tf_session.TF_DeleteLibraryHandle(handle)  # frees the handle; stays loaded
    return f"{path} (ops: {', '.join(sorted(op.name for op in ops)) or 'none'})"


def op_hint(message: str) -> str | None:
    """For TensorFlow's "Op type not registered 'X'" error: what would register X."""
    match = _UNREGISTERED_OP.search(message)
    if match is None:
        return None
    op = match[1]
    for package in OP_PACKAGES:
        if package.owns(op):
            return f"pyserving: '{op}' is a {package.title} op: {package.install}."
    return (f"pyserving: if '{op}' is a custom op, load its compiled library with "
            "--custom_op_libraries=/path/to/library.so.")


def with_op_hint(error: ServingError) -> ServingError:
    """``error`` with the op hint appended to TensorFlow's message, if it has one."""
    hint = op_hint(error.message)
    return ServingError(error.code, f"{error.message} {hint}") if hint else error
