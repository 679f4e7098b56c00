"""Calls spread over several server replicas, with per-replica health (``shelfml-client batch --url A --url B``).

Round robin over the replicas in service. A replica that fails a call with UNAVAILABLE (stopped, restarting,
unreachable, shedding load) or a deadline is taken out of service for ``cooldown_s`` and the call goes to the
next one; when every replica is out, the pool waits with exponential backoff until one is back, at most
``rounds`` times. The server's own answers (INVALID_ARGUMENT) are not a replica's fault and pass through.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence, TypeVar

from shelfml.client.client import DeadlineExceededError, ServerUnavailableError

T = TypeVar("T")
FAILOVER = (ServerUnavailableError, DeadlineExceededError)


@dataclass
class Replica:
    url: str
    client: object  # an AsyncShelfmlClient
    calls: int = 0  # answered
    failures: int = 0  # calls it failed (each went to another replica)
    out_until: float = field(default=0.0, repr=False)  # monotonic time it is back in service

    def in_service(self, now: float) -> bool:
        return now >= self.out_until


class ReplicaPool:
    def __init__(self, replicas: Sequence[Replica], cooldown_s: float = 5.0, rounds: int = 4,
                 backoff_s: float = 0.5) -> None:
        if not replicas:
            raise ValueError("no replica to call: give at least one --url")
        self.replicas, self.cooldown_s, self.rounds, self.backoff_s = list(replicas), cooldown_s, rounds, backoff_s
        self._next = 0

    def _pick(self, now: float) -> Replica | None:
        for step in range(len(self.replicas)):
            replica = self.replicas[(self._next + step) % len(self.replicas)]
            if replica.in_service(now):
                self._next = (self._next + step + 1) % len(self.replicas)
                return replica
        return None

    async def call(self, fn: Callable[[object], Awaitable[T]]) -> T:
        """``fn(client)`` on a replica in service; another one if it fails over."""
        last: Exception | None = None
        for attempt in range(self.rounds + 1):
            while (replica := self._pick(time.monotonic())) is not None:
                try:
                    result = await fn(replica.client)
                except FAILOVER as e:
                    replica.failures += 1
                    replica.out_until = time.monotonic() + self.cooldown_s
                    last = e
                    continue
                replica.calls += 1
                return result
            if attempt < self.rounds:  # every replica is out: wait for the first to come back (bounded)
                back = min(r.out_until for r in self.replicas) - time.monotonic()
                await asyncio.sleep(max(back, self.backoff_s * 2 ** attempt))
        names = ", ".join(r.url for r in self.replicas)
        raise ServerUnavailableError(f"no replica answered ({names}); last error: {last}",
                                     getattr(last, "status", None), getattr(last, "model", None))

    def health(self) -> dict[str, dict]:
        now = time.monotonic()
        return {r.url: {"calls": r.calls, "failures": r.failures, "in_service": r.in_service(now)}
                for r in self.replicas}
