"""pyserving's model server: TF Serving's gRPC API over TensorFlow SavedModels.

``ModelServer`` and ``ServerOptions`` are the embedding API; importing this package does not
import TensorFlow until a server is built.
"""

from typing import TYPE_CHECKING, Any

from pyserving.server.options import ServerOptions

if TYPE_CHECKING:
    from pyserving.server.app import ModelServer

__all__ = ["ModelServer", "ServerOptions"]


def __getattr__(name: str) -> Any:
    if name == "ModelServer":
        from pyserving.server.app import ModelServer

        return ModelServer
    raise AttributeError(name)
