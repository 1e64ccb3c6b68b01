"""Code every service shares: settings, the reading model, Kafka and MongoDB plumbing."""
