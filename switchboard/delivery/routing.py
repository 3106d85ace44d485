"""Which subscriptions may want an event, without looking at every subscription.

The fan-out asks, for every processed event, which subscriptions match it. Asking each subscription's
:class:`~switchboard.delivery.filters.Filter` costs time in the number of subscriptions: 2.1 ms per event with
10,000 of them (``python -m bench.matching``), which a processor pays for every event. :class:`FilterIndex`
answers with the few subscriptions whose source and event type can match, in time that does not grow with the
number of subscriptions but with the number of matches.

Contract
--------
``candidates(source, event_type)`` returns every key added whose filter's ``matches_meta(source, event_type)``
is true, and possibly a few more: the caller still applies the filter (a glob is indexed by its literal
prefix, the part before its first ``*`` or ``?``, so ``in?oice.*`` is found for every type that starts with
``in``). Keys come back in the order they were first added (a key added again keeps its place), so the
fan-out's order does not depend on how the index is laid out.

Layout: each filter is filed under every (source, type) pair it names, with ``None`` for "every source".
A type without a wildcard goes to the exact table; a glob (no globs at all counts as ``*``) to the prefix
table under its literal prefix. A lookup reads the exact table for the event's type and the prefix table
for each prefix length in use (``*`` is length 0), for the event's source and for ``None``: about twice
(1 + the distinct prefix lengths) dictionary reads. Not safe across threads; the cache uses it from its
event loop only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from switchboard.delivery.filters import Filter

_WILDCARDS = "*?"

_Slot = tuple[str | None, str]  # (source or None for every source, event type or glob prefix)


def _prefix(glob: str) -> str | None:
    """The literal part of a glob before its first wildcard; None for a type without wildcards."""
    cut = min((i for i in (glob.find(w) for w in _WILDCARDS) if i >= 0), default=-1)
    return None if cut < 0 else glob[:cut]


class FilterIndex:
    def __init__(self) -> None:
        self._exact: dict[_Slot, set[str]] = {}
        self._prefixed: dict[_Slot, set[str]] = {}
        self._lengths: Counter[int] = Counter()  # prefix length → filings under a prefix that long
        self._filed: dict[str, list[tuple[bool, _Slot]]] = {}  # key → where it is filed (exact?, slot)
        self._order: dict[str, int] = {}  # key → when it was first added
        self._next = 0

    def __len__(self) -> int:
        return len(self._filed)

    def add(self, key: str, f: Filter) -> None:
        """Files ``key`` under ``f`` (replacing what it was filed under)."""
        self.remove(key, keep_place=True)
        if key not in self._order:
            self._order[key] = self._next
            self._next += 1
        filed: dict[tuple[bool, _Slot], None] = {}  # two globs with one prefix are filed there once
        sources: Iterable[str | None] = f.sources or (None,)
        for source in sources:
            for glob in f.event_types.globs or ("*",):
                prefix = _prefix(glob)
                filed[(True, (source, glob)) if prefix is None else (False, (source, prefix))] = None
        for exact, slot in filed:
            if exact:
                self._exact.setdefault(slot, set()).add(key)
            else:
                self._prefixed.setdefault(slot, set()).add(key)
                self._lengths[len(slot[1])] += 1
        self._filed[key] = list(filed)

    def remove(self, key: str, *, keep_place: bool = False) -> None:
        """Unfiles ``key`` (nothing if it is not filed). ``keep_place``: it comes back at once, in its place."""
        for exact, slot in self._filed.pop(key, ()):
            table = self._exact if exact else self._prefixed
            keys = table[slot]
            keys.discard(key)
            if not keys:
                del table[slot]
            if not exact:
                n = len(slot[1])
                self._lengths[n] -= 1
                if not self._lengths[n]:
                    del self._lengths[n]
        if not keep_place:
            self._order.pop(key, None)

    def candidates(self, source: str, event_type: str) -> list[str]:
        """The keys whose filter may match (see the contract), in the order they were first added."""
        found: set[str] = set()
        for s in (source, None):
            keys = self._exact.get((s, event_type))
            if keys:
                found |= keys
            for n in self._lengths:
                if n <= len(event_type):
                    keys = self._prefixed.get((s, event_type[:n]))
                    if keys:
                        found |= keys
        order = self._order
        return sorted(found, key=order.__getitem__)
