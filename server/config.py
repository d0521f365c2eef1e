"""Model configuration: TF Serving's ModelServerConfig, from flags or a text-format file."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from dataclasses import dataclass

from google.protobuf import text_format

from pyserving.server.apis import model_server_config_pb2
from pyserving.server.errors import ServingError, invalid_argument, io_error
from pyserving.server.options import ServerOptions

log = logging.getLogger(__name__)

ModelConfig = model_server_config_pb2.ModelConfig
ModelServerConfig = model_server_config_pb2.ModelServerConfig

_VERSION_DIR = re.compile(r"^\d+$")


class ConfigParseError(ServingError):
    """A config file that is not valid text format; ``detail`` is protobuf's parser message."""

    def __init__(self, path: str, detail: str) -> None:
        import grpc

        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid protobuf file: '{path}'")
        self.detail = detail


def single_model_config(name: str, base_path: str) -> ModelServerConfig:
    """The config TF Serving builds from --model_name and --model_base_path."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def read_text_file(path: str) -> str:
    """A file a flag names, read as TF Serving's ParseProtoTextFile reads it (an mmap of the
    whole file): a failure is TensorFlow's ``<path>; <strerror>`` with its errno's code, so a
    missing file is NOT_FOUND and an empty one INVALID_ARGUMENT (mmap of 0 bytes)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise io_error(path, error.errno or 0) from None
    try:
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise io_error(path, errno.ENODEV)  # what mmap says of a directory
        if info.st_size == 0:
            raise io_error(path, errno.EINVAL)
        with os.fdopen(os.dup(descriptor), "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise io_error(path, error.errno or 0) from None
    finally:
        os.close(descriptor)
    return data.decode("utf-8", errors="replace")


def read_model_config_file(path: str) -> ModelServerConfig:
    """Parse a text-format ModelServerConfig file, failing the way TF Serving does."""
    text = read_text_file(path)
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ConfigParseError(
            path, f"Error parsing text-format tensorflow.serving.ModelServerConfig: {error}"
        ) from None
    return config


def model_server_config(options: ServerOptions) -> ModelServerConfig:
    """The ModelServerConfig the options ask for (file wins over --model_base_path)."""
    if options.model_config_file:
        return read_model_config_file(options.model_config_file)
    if not options.model_base_path:
        raise invalid_argument("Both server_options.model_base_path and "
                               "server_options.model_config_file are empty!")
    return single_model_config(options.model_name, options.model_base_path)


def validate_model_server_config(config: ModelServerConfig) -> None:
    """The checks ServerCore makes before it accepts a config."""
    if config.WhichOneof("config") != "model_config_list":
        raise invalid_argument("ServerCore can only handle model_config_list. Was: "
                               f"{config.WhichOneof('config')}")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if model.name in seen:
            raise invalid_argument("Illegal to list model " + model.name +
                                   " multiple times in config list")
        seen.add(model.name)
    # Names first, then paths, in ValidateModelConfigList's order.
    for model in config.model_config_list.config:
        if not os.path.isabs(model.base_path) and "://" not in model.base_path:
            raise invalid_argument(f"Expected model {model.name} to have an absolute path or "
                                   f"URI; got base_path()={model.base_path}")
        if model.model_platform and model.model_platform != "tensorflow":
            raise invalid_argument(f"Model {model.name} has unsupported model_platform "
                                   f"{model.model_platform!r}; pyserving serves 'tensorflow'")


@dataclass(frozen=True)
class VersionDirectory:
    version: int
    path: str


def scan_versions(model: ModelConfig) -> list[VersionDirectory]:
    """Numeric child directories of the base path, ascending; raises if the path is missing."""
    base = model.base_path
    if not os.path.exists(base):
        raise invalid_argument(f"Could not find base path {base} for servable {model.name} "
                               f"with error NOT_FOUND: {base} not found")
    found = []
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if _VERSION_DIR.match(name) and os.path.isdir(path):
            found.append(VersionDirectory(int(name), path))
    return sorted(found, key=lambda v: v.version)


def aspired_versions(model: ModelConfig, available: list[VersionDirectory]
                     ) -> list[VersionDirectory]:
    """Apply the model's version policy (latest N by default) to the versions on disk."""
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(available)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in available if v.version in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return available[-max(count, 1):] if available else []


def no_versions_message(model: ModelConfig) -> str:
    return (f"No versions of servable {model.name} found under base path {model.base_path}. "
            "Did you forget to name your leaf directory as a number (eg. '/1/')?")
