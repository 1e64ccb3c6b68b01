"""Kafka concerns, one module each: producer, consumer loop, dead-letter publishing, topics."""
