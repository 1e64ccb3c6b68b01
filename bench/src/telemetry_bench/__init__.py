"""`make bench`: every speed figure the issues ask for, beside a ceiling measured in the same run.

A figure alone says little on a shared 2-core machine; the same work done by the
bare library underneath (a plain aiokafka producer, a plain MongoDB bulk insert,
the API without Kafka behind it) measured minutes apart on the same box does.
So every figure is reported as a ratio to its ceiling, and nothing here asserts
a time: the smoke test only checks that every figure is produced.
"""
