"""Operator tools: the local stack runner, the real servers tests start, the load generator."""
