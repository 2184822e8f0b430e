"""The hub: every event goes, in order, to every consumer, none of which blocks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from .events import JobEvent

logger = logging.getLogger("pgagent_watch.hub")


class Consumer(Protocol):
    """Something that wants events: the push layer, the alert engine, metrics.

    Both calls must return at once; a consumer that has work to do queues it
    for a task of its own.
    """

    def submit(self, events: Sequence[JobEvent]) -> None: ...

    def server_state(self, server_id: int, state: str, reason: str | None) -> None: ...


class Hub:
    """Hands each batch of events to every consumer, in the order they came."""

    def __init__(self) -> None:
        self._consumers: list[Consumer] = []

    def add(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)

    def publish(self, events: Sequence[JobEvent]) -> None:
        if not events:
            return
        for consumer in self._consumers:
            try:
                consumer.submit(events)
            except Exception:
                logger.exception(
                    "consumer %r failed on %d events", consumer, len(events)
                )

    def publish_state(self, server_id: int, state: str, reason: str | None) -> None:
        for consumer in self._consumers:
            try:
                consumer.server_state(server_id, state, reason)
            except Exception:
                logger.exception("consumer %r failed on a state change", consumer)
