"""A circuit breaker per webhook URL: stop hammering a receiver that is down.

closed -> open after ``failures_to_open`` consecutive failures; open -> half-open
once ``cooloff_s`` has passed, letting exactly one probe through; the probe's
success closes the circuit, its failure opens it for another cool-off. While a
circuit is open its deliveries stay due in MongoDB and are not attempted, so
they neither spend attempts nor load the receiver.

State lives in the notifier's memory: after a restart a dead URL costs
``failures_to_open`` attempts again before its circuit reopens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum


class CircuitState(IntEnum):
    # The values are the webhook_circuit_state gauge's.
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass
class Circuit:
    failures_to_open: int
    cooloff_s: float
    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probing: bool = False

    def blocks(self, now: float) -> bool:
        """Whether no attempt may start now (so none is even picked)."""
        if self.state is CircuitState.OPEN:
            return now - self.opened_at < self.cooloff_s
        if self.state is CircuitState.HALF_OPEN:
            return self.probing
        return False

    def acquire(self, now: float) -> bool:
        """Start an attempt if the circuit lets one through; half-open lets one probe."""
        if self.blocks(now):
            return False
        if self.state is not CircuitState.CLOSED:
            self.state = CircuitState.HALF_OPEN
            self.probing = True
        return True

    def record(self, success: bool, now: float) -> None:
        self.probing = False
        if success:
            self.state = CircuitState.CLOSED
            self.consecutive_failures = 0
            return
        self.consecutive_failures += 1
        if (
            self.state is not CircuitState.CLOSED
            or self.consecutive_failures >= self.failures_to_open
        ):
            self.state = CircuitState.OPEN
            self.opened_at = now


class Breakers:
    """The circuits of every URL seen, reporting each state change to ``on_change``."""

    def __init__(
        self,
        failures_to_open: int,
        cooloff_s: float,
        on_change: Callable[[str, CircuitState], None] = lambda url, state: None,
    ):
        self._failures_to_open = failures_to_open
        self._cooloff_s = cooloff_s
        self._on_change = on_change
        self._circuits: dict[str, Circuit] = {}

    def circuit(self, url: str) -> Circuit:
        if url not in self._circuits:
            self._circuits[url] = Circuit(self._failures_to_open, self._cooloff_s)
            self._on_change(url, CircuitState.CLOSED)
        return self._circuits[url]

    def blocked(self, now: float) -> list[str]:
        return [url for url, circuit in self._circuits.items() if circuit.blocks(now)]

    def acquire(self, url: str, now: float) -> bool:
        circuit = self.circuit(url)
        before = circuit.state
        allowed = circuit.acquire(now)
        if circuit.state is not before:
            self._on_change(url, circuit.state)
        return allowed

    def record(self, url: str, success: bool, now: float) -> None:
        circuit = self.circuit(url)
        before = circuit.state
        circuit.record(success, now)
        if circuit.state is not before:
            self._on_change(url, circuit.state)
