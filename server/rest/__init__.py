"""The HTTP/REST API: TF Serving's /v1/models routes (handler), the aiohttp server that carries
them (server), and the JSON of requests and responses."""
