"""The rules and silences the worker evaluates with, reloaded from MongoDB every few seconds.

A rule created, changed or deleted through dashboard-api reaches the worker
within ``RULES_REFRESH_S`` without a restart. Each batch is evaluated with the
snapshot taken at its start. The built-in rules (the environment's thresholds,
TEMP_* and HUMIDITY_*) are written at start, so they are listed with the others;
a person may disable one, never change its thresholds (those are the environment's).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from telemetry_common.domain.alert_rules import Rule, Silence
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.infra.metrics import Instruments
from telemetry_common.infra.mongo import ALERT_RULES, ALERT_SILENCES, Database
from telemetry_common.infra.reloading import Reloading

from alerts_worker.incidents import RuleIndex
from alerts_worker.store import ensure_alert_indexes

log = logging.getLogger(__name__)


class RuleCache(Reloading):
    what = "alert rules"

    def __init__(
        self,
        db: Database,
        refresh_s: float,
        registry: CollectorRegistry,
        builtin: list[dict[str, Any]],
    ):
        on = Instruments(registry)
        super().__init__(refresh_s)
        self._db = db
        self._builtin = builtin
        self._installed = False
        self.rules = RuleIndex([])
        self.silences: list[Silence] = []
        self._rules_loaded = on.gauge(
            "alerts_rules_loaded", "Enabled alert rules the worker evaluates"
        )
        self._reload_errors = on.counter(
            "alerts_rule_reload_errors_total",
            "Failed reloads of the rules and silences (the last known are kept)",
        )

    async def reload(self) -> None:
        if not self._installed:
            await ensure_alert_indexes(self._db)
            await install_builtin_rules(self._db, self._builtin)
            self._installed = True
        rules = []
        async for doc in self._db[ALERT_RULES].find({}):
            try:
                rules.append(Rule.model_validate(doc))
            except ValidationError as exc:
                # One rule written by hand, badly, must not stop the others.
                log.error("alert rule %s skipped: %s", doc.get("_id"), exc)
                self._reload_errors.inc()
        silences = [
            Silence.model_validate(doc)
            async for doc in self._db[ALERT_SILENCES].find({"until": {"$gt": utcnow()}})
        ]
        self.rules = RuleIndex(rules)
        self.silences = silences
        self._rules_loaded.set(len(self.rules.by_id))
        self.loaded = True

    def reload_failed(self, exc: Exception) -> None:
        self._reload_errors.inc()
        super().reload_failed(exc)


async def install_builtin_rules(db: Database, builtin: list[dict[str, Any]]) -> None:
    """Write the built-in rules with this worker's thresholds; keep whether each is enabled."""
    now = utcnow()
    for rule in builtin:
        # The installation's thresholds are the default project's rules.
        definition = {k: v for k, v in rule.items() if k != "_id"} | {"project_id": DEFAULT_PROJECT}
        await db[ALERT_RULES].update_one(
            {"_id": rule["_id"]},
            {
                "$set": {**definition, "updated_at": now},
                "$setOnInsert": {"enabled": True, "created_at": now, "created_by": "builtin"},
            },
            upsert=True,
        )
