"""HTTP ingestion: validates device readings and publishes them to Kafka before answering."""
