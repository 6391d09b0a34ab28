"""Apache Kafka: `acks=all` sends, a consumer group, offsets committed only after the work."""
