"""Traffic split and mirror traffic: which deployment answers, which ones shadow the request."""

from __future__ import annotations

import random
from itertools import accumulate
from typing import Dict, List, Optional


class TrafficRouter:
    """Immutable: a new one is built on every traffic change (readers never see half an update)."""

    def __init__(self, traffic: Dict[str, int], mirror: Dict[str, int]):
        live = [(name, pct) for name, pct in traffic.items() if pct > 0]
        self._names = [name for name, _ in live]
        self._cum = list(accumulate(pct for _, pct in live))
        self._total = self._cum[-1] if self._cum else 0
        self._mirror = [(name, pct / 100.0) for name, pct in mirror.items() if pct > 0]
        self._rand = random.random

    def pick(self) -> Optional[str]:
        """A deployment drawn by the traffic weights, or None when nothing has traffic."""
        names = self._names
        if len(names) == 1:
            return names[0]
        if not names:
            return None
        r = self._rand() * self._total
        for name, edge in zip(names, self._cum):
            if r < edge:
                return name
        return names[-1]

    def mirrors(self, primary: str) -> List[str]:
        """The deployments that also get (a copy of) this request; the client never sees their answers
        (the collector records them for canary analysis)."""
        if not self._mirror:
            return []
        return [name for name, p in self._mirror if name != primary and self._rand() < p]
