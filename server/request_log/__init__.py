"""Request logging (``ModelConfig.logging_config``): answered Predict, Classify, Regress and
MultiInference requests, sampled, written off the request path as TFRecord files of
``tensorflow.serving.PredictionLog`` (what warmup files and ``tf.data.TFRecordDataset`` read).

settings.py reads and checks the config, logger.py samples on the request's thread,
writer.py builds (records.py) and writes the records on its own thread.
"""

from pyserving.server.request_log.logger import ModelRequestLog, RequestLog
from pyserving.server.request_log.records import (
    CLASSIFY,
    MULTI_INFERENCE,
    PREDICT,
    REGRESS,
    ArraysPredict,
)
from pyserving.server.request_log.settings import LogSettings

__all__ = [
    "CLASSIFY",
    "MULTI_INFERENCE",
    "PREDICT",
    "REGRESS",
    "ArraysPredict",
    "LogSettings",
    "ModelRequestLog",
    "RequestLog",
]
