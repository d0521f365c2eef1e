"""The Open Inference Protocol (KServe V2, as Triton defines it) beside TF Serving's API:
REST routes under /v2 (rest.py) and gRPC ``inference.GRPCInferenceService``
(grpc_service.py), both over one adapter to the serving core (inference.py)."""
