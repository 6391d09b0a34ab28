"""RabbitMQ: durable queues on the default exchange, publisher confirms, persistent messages."""
