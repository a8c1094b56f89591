"""Prometheus metrics: the ``Metrics`` container, the bus observer that feeds it, exposition."""

from taskplatform.metrics.registry import Metrics

__all__ = ["Metrics"]
