"""What the services run on: Kafka, MongoDB, settings, logs, metrics, retries, workers."""
