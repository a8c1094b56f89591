"""The gRPC tests' fixtures (``tests/grpc_api/front.py``): ``serve`` and ``front``."""

from tests.grpc_api.front import front, serve

__all__ = ["front", "serve"]
