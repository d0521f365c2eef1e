"""saved_model.py is the one door to TensorFlow: the core and its transports import none."""

from __future__ import annotations

import subprocess
import sys

TENSORFLOW_FREE = ("core", "manager", "version_policy", "state_monitor", "batching.batcher",
                   "source", "servable", "predict", "example_inference", "warmup",
                   "configurator", "health", "grpc_services", "grpc_aio", "rest.handler",
                   "rest.server", "rollout.router", "metrics", "gc_policy", "grpc_ports",
                   "tls", "batching.config", "request_log.writer", "v2.rest",
                   "v2.grpc_service", "v2.codec", "v2.inference")


def test_the_core_and_its_transports_import_no_tensorflow():
    imports = "; ".join(f"import pyserving.server.{module}" for module in TENSORFLOW_FREE)
    script = f"import sys; {imports}; print(sorted(m for m in sys.modules if 'tensorflow' " \
             "in m.split('.')[0]))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout

