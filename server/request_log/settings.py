"""Which models log their requests, and where: ``ModelConfig.logging_config`` read and checked.

TF Serving's open-source build registers no log collector, so a config that sets
``logging_config`` fails there ("No request-logger-creator provided"). pyserving has one
collector, ``tfrecord`` (also what an empty type means); any other type, a sampling rate
outside [0, 1] or a prefix whose folder cannot be written is INVALID_ARGUMENT when the config
is loaded (start-up, ReloadConfig, the polled config file), so the models keep serving under
the config in force.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from pyserving.server.errors import invalid_argument

TFRECORD = "tfrecord"


@dataclass(frozen=True)
class LogSettings:
    """One model's request logging: the file prefix, the sampling rate and the
    ``SamplingConfig`` every record carries in its ``log_metadata``."""

    model: str
    filename_prefix: str
    sampling_rate: float
    sampling_config: bytes  # serialized tensorflow.serving.SamplingConfig


def logging_settings(config: Any) -> dict[str, LogSettings]:
    """The models of a ModelServerConfig that log requests, checked; raises ServingError."""
    settings: dict[str, LogSettings] = {}
    if config.WhichOneof("config") != "model_config_list":
        return settings
    for model in config.model_config_list.config:
        if not model.HasField("logging_config"):
            continue
        logging_config = model.logging_config
        collector = logging_config.log_collector_config
        if collector.type not in ("", TFRECORD):
            raise invalid_argument(f"Model {model.name}: unsupported log_collector_config type "
                                   f'"{collector.type}"; pyserving writes "{TFRECORD}" '
                                   "(TFRecord files of PredictionLog)")
        rate = logging_config.sampling_config.sampling_rate
        if not 0.0 <= rate <= 1.0:
            raise invalid_argument(f"Model {model.name}: sampling_rate {rate} is not in "
                                   "[0, 1]")
        prefix = collector.filename_prefix
        if not prefix:
            raise invalid_argument(f"Model {model.name}: logging_config needs "
                                   "log_collector_config.filename_prefix")
        check_writable_folder(model.name, prefix)
        settings[model.name] = LogSettings(model.name, prefix, rate,
                                           logging_config.sampling_config.SerializeToString())
    return settings


def check_writable_folder(model: str, prefix: str) -> None:
    """The prefix's folder exists (it is created if missing) and a file can be made in it;
    tried for real, since ``os.access`` says yes to root whatever the mode."""
    folder = os.path.dirname(os.path.abspath(prefix))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise invalid_argument(f"Model {model}: cannot write request logs under "
                               f"filename_prefix {prefix}: {folder} is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".pyserving-log-check-"):
            pass
    except OSError as error:
        raise invalid_argument(f"Model {model}: cannot write request logs under "
                               f"filename_prefix {prefix}: {error.strerror or error}") from None

