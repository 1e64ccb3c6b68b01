"""The alert notifier: every alerts.triggered transition, delivered to the webhooks that want it.

The path of a notification, by file: ``records`` turns a transition into one
delivery document per matching webhook (the only write before the Kafka
commit); ``dispatcher`` picks due deliveries from MongoDB and ``delivery``
POSTs one, signed by ``signature``; ``backoff`` and ``circuit`` decide when the
next attempt may go; ``notifier`` wires them to Kafka and MongoDB.
"""
