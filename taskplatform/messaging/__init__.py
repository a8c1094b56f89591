"""RabbitMQ plumbing: the robust connection, the message codec, the publisher."""
