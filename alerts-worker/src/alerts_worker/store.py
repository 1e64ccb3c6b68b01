"""Where evaluation state, alerts and their notifications are written.

The (rule, device) states of the partitions this worker owns are held in memory
(:class:`HeldStates`): a device's states are read from the store once, when its
first reading since the partition was claimed arrives, and after that only
written. A state that raised a transition is written with its batch; one that
only learned (a baseline, a window of values) at the next checkpoint, before the
offsets are committed (``ConsumerLoop``). A batch is written in this order, each
step idempotent, so a crash between any two is repaired by the replay of the
uncommitted records:

0. the event ids seen (a reading sent twice by its device is evaluated once);
1. alert documents (``_id`` = alert_id: inserted on firing, ``$set`` resolved)
   and one outbox document per transition (``_id`` = notification_id,
   ``notified: false``), both keyed by ids the replay computes again, so a
   replay's insert is refused by its id; written once the partition's claim is
   found still to be this worker's;
2. the states that raised them (the others at the checkpoint), each carrying the
   epoch of its partition's claim, inserted the first time and after that
   replaced only if the stored one is not newer (a worker that lost the
   partition cannot overwrite the new owner); their watermarks then make a
   replay skip the readings already evaluated;
3. the outbox is published to alerts.triggered and marked (``outbox.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DeleteOne, IndexModel, UpdateOne
from telemetry_common.domain.reading import Reading
from telemetry_common.domain.rollup_layout import scoped_id
from telemetry_common.infra.kafka.consumer import Consumed
from telemetry_common.infra.mongo import ALERTS, Database
from telemetry_common.infra.ownership import OwnedPartitions, PartitionOwnership, not_newer_than
from telemetry_common.infra.versioned import (
    chunks,
    insert_absent,
    insert_first_copies,
    source_position,
    write_fenced,
)

from alerts_worker.documents import Acknowledgement, AlertFields, OutboxEntry
from alerts_worker.incidents import RuleDeviceState, TransitionToRecord

ALERT_STATE = "alert_state"
# When each device was last heard from, for absent rules (``absence.py``).
DEVICE_PRESENCE = "device_presence"
ALERT_OUTBOX = "alert_outbox"
# Event ids seen, so a device's retry of a reading is evaluated once.
ALERT_SEEN = "alert_seen_events"
# A transition is announced within moments, and a retry comes within moments; a
# week covers any outage (alerts.triggered keeps a week too) and keeps both bounded.
KEEP_S = 7 * 86_400
# Devices whose states are read in one find (measured: a few finds of 500 ids
# cost less than one of thousands).
LOAD_CHUNK = 500
# A refused write is a newer owner, or an epoch nobody issued (claimed again,
# then written once more); anything past that is not settling.
MAX_ROUNDS = 5
# Fields a person sets on an alert (acknowledging it); the worker never writes them.
ACK_FIELDS: Acknowledgement = {"acknowledged_at": None, "acknowledged_by": None}


async def ensure_alert_indexes(db: Database) -> None:
    await db[ALERT_STATE].create_indexes([IndexModel([("device_id", ASCENDING)], name="device")])
    await db[ALERT_OUTBOX].create_indexes(
        [
            IndexModel([("notified", ASCENDING), ("partition", ASCENDING)], name="pending"),
            IndexModel(
                [("created_at", ASCENDING)], name="created_at_ttl", expireAfterSeconds=KEEP_S
            ),
        ]
    )
    await db[ALERT_SEEN].create_indexes(
        [IndexModel([("seen_at", ASCENDING)], name="seen_at_ttl", expireAfterSeconds=KEEP_S)]
    )
    # Each partition's device presence is read whole when the partition is assigned.
    await db[DEVICE_PRESENCE].create_indexes(
        [IndexModel([("partition", ASCENDING)], name="partition")]
    )


async def drop_retries(
    db: Database, items: list[Consumed[Reading]], now: datetime
) -> list[Consumed[Reading]]:
    """The batch without second copies of a reading (a device retry, in this batch or
    an earlier one), so that every reading counts once in every k-of-n window."""
    unique: dict[str, Consumed[Reading]] = {}
    for item in items:
        # Event ids are unique within a project only.
        unique.setdefault(scoped_id(item.value.project_id, item.value.event_id), item)
    docs = [
        {"_id": event_id, "_src": source_position(item.partition, item.offset), "seen_at": now}
        for event_id, item in unique.items()
    ]
    retried = await insert_first_copies(db[ALERT_SEEN], docs)
    return [item for event_id, item in unique.items() if event_id not in retried]


def _fired_document(alert: AlertFields) -> dict[str, Any]:
    return {"_id": alert["alert_id"], **alert, **ACK_FIELDS}


def _resolved_write(alert: AlertFields) -> UpdateOne:
    resolved = {
        "status": alert["status"],
        "resolved_at": alert["resolved_at"],
        "resolved_reason": alert.get("resolved_reason"),
    }
    return UpdateOne({"_id": alert["alert_id"]}, {"$set": resolved})


def _outbox_document(raised: TransitionToRecord, now: datetime) -> dict[str, Any]:
    transition = raised.transition
    entry: OutboxEntry = {
        "alert_id": transition.alert["alert_id"],
        "device_id": transition.alert["device_id"],
        "transition": transition.kind,
        "transition_at": transition.at,
        "alert": transition.alert,
        "partition": raised.partition,
        "created_at": now,
        # A silenced transition is recorded as already handled: never published.
        "notified": not transition.notify,
        "silenced": not transition.notify,
    }
    return {"_id": transition.notification_id, **entry}


async def record_transitions(
    db: Database, raised: list[TransitionToRecord], now: datetime
) -> set[str]:
    """Record the transitions; return the notification ids recorded for the first time.

    A transition computed again (a replay of readings whose state was not kept)
    is already in the outbox, and may have been published already: its id refuses
    the insert. (Inserted, not upserted: a third of the cost, ``insert_absent``.)
    """
    if not raised:
        return set()
    fired = [r.transition.alert for r in raised if r.transition.kind == "fired"]
    await insert_absent(db[ALERTS], [_fired_document(alert) for alert in fired])
    # After the inserts: an alert fired and resolved within one batch is then resolved.
    resolved = [
        _resolved_write(r.transition.alert) for r in raised if r.transition.kind == "resolved"
    ]
    if resolved:
        await db[ALERTS].bulk_write(resolved, ordered=True)
    entries = [_outbox_document(r, now) for r in raised]
    refused = await insert_absent(db[ALERT_OUTBOX], entries)
    return {entry["_id"] for entry in entries} - refused


async def load_states(db: Database, device_keys: Iterable[str]) -> list[RuleDeviceState]:
    """Every rule's state stored for these devices (by their ids within their projects,
    ``scoped_id``; also of rules since deleted, to resolve their alerts)."""
    wanted = set(device_keys)
    # Found by device id, which the same device id in another project shares.
    device_ids = sorted({key.rpartition("|")[2] for key in wanted})
    found = []
    for chunk in chunks(device_ids, LOAD_CHUNK):
        async for doc in db[ALERT_STATE].find({"device_id": {"$in": chunk}}):
            tracked = RuleDeviceState.from_document(doc)
            if tracked.device_key in wanted:
                found.append(tracked)
    return found


def device_key(reading: Reading) -> str:
    return scoped_id(reading.project_id, reading.device_id)


@dataclass(slots=True)
class HeldDevice:
    """A device's states with something to keep; none when all its rules are idle."""

    partition: int
    states: dict[str, RuleDeviceState] = field(default_factory=dict)


class HeldStates:
    """The (rule, device) states of the partitions this worker owns, least recently
    seen device first, at most ``device_limit`` devices kept between batches.

    Devices are held by their id within their project (``scoped_id``): two
    projects' ``dev-1`` are two devices (on one partition: the record key is the
    device id)."""

    def __init__(self, db: Database, ownership: PartitionOwnership, device_limit: int):
        self._db = db
        self.owned = OwnedPartitions(ownership)
        self.device_limit = device_limit
        self.devices: OrderedDict[str, HeldDevice] = OrderedDict()
        # The newest reading time seen per held device (``evaluate_batch``).
        self.clocks: dict[str, datetime] = {}
        # Devices given readings since the last checkpoint: their states may hold
        # changes not written yet (and are never let go under the limit).
        self._touched: set[str] = set()

    async def partitions_assigned(self, partitions: set[int]) -> set[int]:
        """Claim the partitions; return those whose held states are still exact."""
        kept = await self.owned.assign(partitions)
        self.forget(p for p in {d.partition for d in self.devices.values()} if p not in kept)
        return kept

    async def partitions_revoked(self, partitions: set[int]) -> None:
        # Held on to: if nobody claims them before they come back, they are still exact.
        self.owned.revoke(partitions)

    def forget(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for device_key in [d for d, held in self.devices.items() if held.partition in gone]:
            del self.devices[device_key]
            self.clocks.pop(device_key, None)

    def rewind(self) -> None:
        """Let go of every device given readings since the last checkpoint (a batch
        failed): read again from the store, where the replay of the records since
        the last commit finds them as they were then."""
        for device_key in self._touched:
            self.devices.pop(device_key, None)
            self.clocks.pop(device_key, None)
        self._touched.clear()

    async def for_batch(self, items: list[Consumed[Reading]]) -> dict[str, RuleDeviceState]:
        """Every state of the batch's devices by state id, reading from the store only
        the devices not held yet."""
        partition_of = {device_key(item.value): item.partition for item in items}
        devices = self.devices
        unheld = [
            key
            for key, partition in partition_of.items()
            if key not in devices or devices[key].partition != partition
        ]
        self._touched.update(partition_of)
        if unheld:
            for key in unheld:
                devices[key] = HeldDevice(partition_of[key])
            for tracked in await load_states(self._db, unheld):
                devices[tracked.device_key].states[tracked.rule_id] = tracked
        batch: dict[str, RuleDeviceState] = {}
        for key in partition_of:
            devices.move_to_end(key)
            for tracked in devices[key].states.values():
                batch[tracked.doc_id] = tracked
        return batch

    async def lost_before_recording(self, partitions: Iterable[int]) -> set[int]:
        """Of the partitions with transitions to record, those a newer owner claimed;
        they are let go (their states too), so nothing of theirs is written."""
        lost = await self.owned.claimed_elsewhere(partitions)
        if lost:
            self.forget(lost)
            self.owned.release(lost)
        return lost

    def hold(self, batch: dict[str, RuleDeviceState]) -> None:
        """Keep the states the batch created, and let go of those it left idle that the
        store does not hold: a fresh state decides the same (``RuleState.is_idle``).

        Held on, they would be evaluated on each of their device's readings until the
        next checkpoint, and a device's idle states piled up between checkpoints
        (measured: evaluation grew from 20 to 36 us a reading within a 30 s interval).
        """
        devices = self.devices
        for tracked in batch.values():
            states = devices[tracked.device_key].states
            if tracked.idle and not tracked.stored and not tracked.alerting:
                states.pop(tracked.rule_id, None)
            else:
                states.setdefault(tracked.rule_id, tracked)

    async def write_alerting(self, batch: dict[str, RuleDeviceState], now: datetime) -> set[int]:
        """Write the states that raised a transition in the batch (an alert and the state
        that knows of it go together); return the partitions found claimed by a newer
        owner (their states are let go)."""
        return await self._write([t for t in batch.values() if t.changed and t.alerting], now)

    async def checkpoint(self, now: datetime) -> set[int]:
        """Write every state changed since the last checkpoint, delete those idle then
        and now, let go of the least recently seen devices past the limit; return the
        partitions found claimed by a newer owner (their states are let go)."""
        touched = [
            tracked
            for key in self._touched
            if key in self.devices
            for tracked in self.devices[key].states.values()
        ]
        lost = await self._write([t for t in touched if t.changed], now, at_checkpoint=True)
        for tracked in touched:
            # A replay starts here now (once the loop commits).
            tracked.idle_before = tracked.idle and tracked.caught_up
        self._touched.clear()
        devices = self.devices
        while len(devices) > self.device_limit:
            key, _ = devices.popitem(last=False)
            self.clocks.pop(key, None)
        return lost

    async def _write(
        self, changed: list[RuleDeviceState], now: datetime, at_checkpoint: bool = False
    ) -> set[int]:
        devices = self.devices
        lost: set[int] = set()
        rounds = 0
        while pending := [t for t in changed if t.changed and self._partition(t) not in lost]:
            rounds += 1
            if rounds > MAX_ROUNDS:
                raise RuntimeError(f"alert states kept changing during {MAX_ROUNDS} rounds")
            epochs, revoked = await self.owned.epochs({self._partition(t) for t in pending})
            lost |= revoked
            pending = [t for t in pending if self._partition(t) not in lost]
            newer = await self._write_round(pending, epochs, now, at_checkpoint)
            lost |= await self.owned.lost_or_reclaimed(newer)
        for tracked in changed:
            if tracked.idle and not tracked.stored and not tracked.changed:
                devices[tracked.device_key].states.pop(tracked.rule_id, None)
        if lost:
            self.forget(lost)
            self.owned.release(lost)
        return lost

    def _partition(self, tracked: RuleDeviceState) -> int:
        return self.devices[tracked.device_key].partition

    async def _write_round(
        self,
        pending: list[RuleDeviceState],
        epochs: dict[int, int],
        now: datetime,
        at_checkpoint: bool,
    ) -> dict[int, int]:
        """Write or delete each pending state under its partition's epoch; the newer
        epochs found on the documents that refused."""
        collection = self._db[ALERT_STATE]

        def deleted_now(t: RuleDeviceState) -> bool:
            # A state made idle since the last checkpoint is written as idle, and
            # deleted at a later checkpoint (``RuleDeviceState.idle_before``) that
            # the loop commits right after; one never stored is just let go.
            return t.idle and t.stored and (t.rule_gone or (at_checkpoint and t.idle_before))

        deleted = [t for t in pending if deleted_now(t)]
        kept = [t for t in pending if not deleted_now(t) and (t.stored or not t.idle)]
        # One the store never held is inserted: a third of the cost of the fenced
        # replace (``write_fenced``). Found stored after all (by an older owner since
        # this one read the device), it is replaced, fenced, in the next round.
        result = await write_fenced(
            collection,
            [t for t in kept if not t.stored],
            [t for t in kept if t.stored],
            lambda t: t.to_document(epochs[self._partition(t)], now),
            lambda doc: int(doc["_e"]),
        )
        refused = set(result.fenced)
        if deleted:
            outcome = await collection.bulk_write(
                [
                    DeleteOne({"_id": t.doc_id, **not_newer_than(epochs[self._partition(t)])})
                    for t in deleted
                ],
                ordered=False,
            )
            if outcome.deleted_count < len(deleted):
                # Deleted already (a retried round), or written by a newer owner.
                refused |= {t.doc_id for t in deleted}
        newer: dict[int, int] = {}
        if refused:
            by_id = {t.doc_id: t for t in pending}
            async for doc in collection.find({"_id": {"$in": list(refused)}}, {"_e": 1}):
                partition = self._partition(by_id[doc["_id"]])
                if doc.get("_e", 0) > epochs[partition]:
                    newer[partition] = max(newer.get(partition, 0), doc["_e"])
        written = {t.doc_id for t in kept} - result.existing
        for tracked in pending:
            if tracked.doc_id in result.existing:
                tracked.stored = True  # still changed: replaced in the next round
            elif self._partition(tracked) not in newer:
                tracked.changed = tracked.alerting = False
                tracked.stored = tracked.doc_id in written
        return newer
