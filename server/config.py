"""Model configuration: TF Serving's ModelServerConfig, from flags or a text-format file."""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf import text_format
from google.protobuf.message import Message

from pyserving.server.apis import model_server_config_pb2
from pyserving.server.errors import invalid_argument, io_error
from pyserving.server.options import ServerOptions
from pyserving.server.remote_storage import RemoteStorage, is_remote

log = logging.getLogger(__name__)

_Message = TypeVar("_Message", bound=Message)
ModelConfig = model_server_config_pb2.ModelConfig
ModelServerConfig = model_server_config_pb2.ModelServerConfig



def parse_proto_text_file(path: str, message: _Message,
                          remote: RemoteStorage | None = None) -> _Message:
    """util/proto_util.h ParseProtoTextFile: the file as ``read_text_file`` reads it, parsed
    as text format into ``message``. A parse error is INVALID_ARGUMENT ``Invalid protobuf file:
    '<path>'``; the parser's reason only goes to the log, as protobuf's parser logs it."""
    text = read_text_file(path, remote)
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        log.error("Error parsing text-format %s: %s", message.DESCRIPTOR.full_name, error)
        raise invalid_argument(f"Invalid protobuf file: '{path}'") from None
    return message


def single_model_config(name: str, base_path: str) -> ModelServerConfig:
    """The config TF Serving builds from --model_name and --model_base_path."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def read_text_file(path: str, remote: RemoteStorage | None = None) -> str:
    """A file a flag names, read as TF Serving's ParseProtoTextFile reads it (an mmap of the
    whole file): a failure is TensorFlow's ``<path>; <strerror>`` with its errno's code, so a
    missing file is NOT_FOUND and an empty one INVALID_ARGUMENT (mmap of 0 bytes). A file in
    object storage (s3://, gs://) is read from there, through ``remote`` when given (a file
    re-read at every poll reuses one file system client)."""
    if is_remote(path):
        data = (remote if remote is not None else RemoteStorage()).read_bytes(path)
        if not data:
            raise io_error(path, errno.EINVAL)
        return data.decode("utf-8", errors="replace")
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


def read_model_config_file(path: str, remote: RemoteStorage | None = None
                           ) -> ModelServerConfig:
    """Parse a text-format ModelServerConfig file, failing the way TF Serving does."""
    return parse_proto_text_file(path, ModelServerConfig(), remote)


def model_server_config(options: ServerOptions) -> ModelServerConfig:
    """The ModelServerConfig the options ask for (file wins over --model_base_path)."""
    if options.model_config_file:
        return read_model_config_file(options.model_config_file)
    if not options.model_base_path:
        raise invalid_argument("Both server_options.model_base_path and "
                               "server_options.model_config_file are empty!")
    return single_model_config(options.model_name, options.model_base_path)


TENSORFLOW_PLATFORM = "tensorflow"
_TENSORFLOW_MODEL_TYPE = model_server_config_pb2.ModelType.Value("TENSORFLOW")


def model_platform(model: ModelConfig) -> str:
    """ServerCore's GetPlatform: the platform a model asks for, from model_platform or the
    deprecated model_type."""
    if model.model_type:
        log.warning("Deprecated ModelServerConfig::model_type field used. "
                    "Prefer ModelServerConfig::model_platform.")
        if model.model_platform:
            raise invalid_argument("Illegal setting both ModelServerConfig::model_type "
                                   "(deprecated) and ModelServerConfig::model_platform, model "
                                   f"name is {model.name}")
        if model.model_type != _TENSORFLOW_MODEL_TYPE:
            raise invalid_argument(f"ModelServerConfig::model_type choice {model.model_type} "
                                   "not supported.")
        return TENSORFLOW_PLATFORM
    if not model.model_platform:
        raise invalid_argument("Illegal setting neither ModelServerConfig::model_type "
                               "(deprecated) nor ModelServerConfig::model_platform, model name "
                               f"is {model.name}")
    return model.model_platform


def validate_model_config_list(config: ModelServerConfig) -> None:
    """ServerCore's ValidateModelConfigList: unique names, then absolute base paths."""
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if model.name in seen:
            raise invalid_argument("Illegal to list model " + model.name +
                                   " multiple times in config list")
        seen.add(model.name)
    for model in config.model_config_list.config:
        if not os.path.isabs(model.base_path) and "://" not in model.base_path:
            raise invalid_argument(f"Expected model {model.name} to have an absolute path or "
                                   f"URI; got base_path()={model.base_path}")


def validate_no_platform_changes(old: ModelServerConfig, new: ModelServerConfig) -> None:
    """ServerCore's ValidateNoModelsChangePlatforms (the old config's platforms are read
    first, so an old model without one fails every later reload, as in TF Serving)."""
    old_platforms = {model.name: model_platform(model) for model in old.model_config_list.config}
    for model in new.model_config_list.config:
        if model.name not in old_platforms:
            continue
        platform = model_platform(model)
        if platform != old_platforms[model.name]:
            raise invalid_argument(
                f"Illegal to change a model's platform. For model {model.name} platform was "
                f"{old_platforms[model.name]} and new platform requested is {platform}")


def validate_platforms(config: ModelServerConfig) -> None:
    """ServerCore's CreateStoragePathRoutes: every model needs a platform this server has."""
    for model in config.model_config_list.config:
        platform = model_platform(model)
        if platform != TENSORFLOW_PLATFORM:
            raise invalid_argument(f"Model {model.name} requests unsupported platform "
                                   f"{platform}")


def validate_model_server_config(config: ModelServerConfig) -> None:
    """The checks a first ModelConfigList passes before its models load."""
    validate_model_config_list(config)
    validate_platforms(config)


@dataclass(frozen=True)
class VersionDirectory:
    version: int
    path: str
