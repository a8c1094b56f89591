"""taskplatform: an event-driven background task platform on RabbitMQ."""

__version__ = "0.1.0"
