"""Fewest waves: bin packing with a weight limit, a size limit and pairs that never share a bin.

Plain data in, plain data out, so the planner's rules stay in planner.py and this module only
answers "can these items go into `bins` bins?". It is an exact branch and bound ("bin
completion", Korf 2003): the heaviest item left is placed in each maximal bin it can share
(every constraint is closed under removing items, so some optimal plan fills each bin until
nothing more fits), items that are interchangeable are tried once, and a branch stops when a
lower bound shows the bins left cannot hold what is left. Deterministic: no clock, no
randomness; `budget` caps the steps taken so an adversarial input cannot stall a parse —
the answer then says it is not proven.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Steps of the search (bins considered): about a second on a loaded machine. Fleets whose
# first-fit or best-fit plan already meets the lower bound never search; see
# `python -m localfleet.bench_planner` for 200-region fleets.
DEFAULT_BUDGET = 10_000


@dataclass(frozen=True)
class Items:
    """The items to pack: `weight[i]`, `partner[i]` (index or None), at most `size` items and
    at most `capacity` weight per bin. Indices are in tie-break order (the fleet file's)."""

    weight: Sequence[int]
    partner: Sequence[int | None]
    capacity: float
    size: int


@dataclass(frozen=True)
class Packing:
    bins: tuple[tuple[int, ...], ...]
    lower_bound: int
    proven: bool  # False only when the budget ran out before the search finished


def quick_bound(items: Items, count: int, weight: int) -> int:
    """Bins needed at least for `count` items weighing `weight`, by count and by weight."""
    return max(math.ceil(count / items.size), math.ceil(weight / items.capacity))


def lower_bound(items: Items, chosen: Sequence[int]) -> int:
    """quick_bound, and Martello and Toth's L2, which also counts items too heavy to share a bin."""
    if not chosen:
        return 0
    cap = items.capacity
    weights = [items.weight[i] for i in chosen]
    best = quick_bound(items, len(weights), sum(weights))
    for alpha in {w for w in weights if 2 * w <= cap} | {0}:
        big = [w for w in weights if w > cap - alpha]  # nothing of size >= alpha fits beside these
        mid = [w for w in weights if cap / 2 < w <= cap - alpha]
        small = sum(w for w in weights if alpha <= w <= cap / 2)
        room = len(mid) * cap - sum(mid)
        best = max(best, len(big) + len(mid) + max(0, math.ceil((small - room) / cap)))
    return best


class _Search:
    def __init__(self, items: Items, budget: int):
        self.items = items
        self.budget = budget
        self.steps = 0
        self.failed: dict[frozenset[int], int] = {}  # left -> most bins known not to be enough

    def fits(self, chosen: list[int], total: int, i: int) -> bool:
        it = self.items
        return len(chosen) < it.size and total + it.weight[i] <= it.capacity and it.partner[i] not in chosen

    def key(self, i: int, left: frozenset[int]) -> tuple[int, int]:
        """Items with the same weight and no partner still waiting are interchangeable."""
        partner = self.items.partner[i]
        return (self.items.weight[i], i if partner is not None and partner in left else -1)

    def bins_with(self, first: int, left: list[int], left_set: frozenset[int]):
        """Every maximal bin holding `first` and items of `left` (sorted heaviest first),
        each set of interchangeable items tried once."""
        candidates = [i for i in left if i != first]
        chosen = [first]
        room = self.items.capacity

        def lightest_first(total: int):
            for i in reversed(candidates):
                if self.items.weight[i] + total > room:
                    return
                yield i

        def walk(pos: int, total: int, skipped: set[tuple[int, int]]):
            self.steps += 1
            if self.steps > self.budget:
                raise _OutOfBudget
            if pos == len(candidates) or len(chosen) == self.items.size:
                # Maximal: nothing left out still fits (lightest first, so the scan stops early).
                if len(chosen) == self.items.size or not any(
                    self.fits(chosen, total, i) for i in lightest_first(total) if i not in chosen
                ):
                    yield tuple(chosen)
                return
            item = candidates[pos]
            key = self.key(item, left_set)
            if key not in skipped and self.fits(chosen, total, item):
                chosen.append(item)
                yield from walk(pos + 1, total + self.items.weight[item], skipped)
                chosen.pop()
            # Leaving `item` out means leaving out its interchangeable twins after it, too.
            yield from walk(pos + 1, total, skipped | {key})

        yield from walk(0, self.items.weight[first], set())

    def pack(self, left: list[int], bins: int, weight: int) -> list[tuple[int, ...]] | None:
        """A packing of `left` (weighing `weight`) into `bins` bins, or None."""
        if not left:
            return []
        left_set = frozenset(left)
        if self.failed.get(left_set, -1) >= bins or quick_bound(self.items, len(left), weight) > bins:
            return None
        for chosen in self.bins_with(left[0], left, left_set):
            taken = set(chosen)
            used = sum(self.items.weight[i] for i in chosen)
            rest = self.pack([i for i in left if i not in taken], bins - 1, weight - used)
            if rest is not None:
                return [chosen, *rest]
        self.failed[left_set] = max(bins, self.failed.get(left_set, -1))
        return None


class _OutOfBudget(Exception):
    pass


def fewest_bins(
    items: Items, chosen: Sequence[int], start: list[tuple[int, ...]], budget: int = DEFAULT_BUDGET
) -> Packing:
    """The packing of `chosen` into the fewest bins; `start` is a valid packing to improve on."""
    bound = lower_bound(items, chosen)
    left = sorted(chosen, key=lambda i: (-items.weight[i], i))
    best = min([tuple(b) for b in start], _first_fit(items, left), key=len)
    if len(best) <= bound:
        return Packing(tuple(best), bound, proven=True)
    search = _Search(items, budget)
    try:
        # Upwards from the bound: the first count that works is the fewest.
        for bins in range(bound, len(best)):
            found = search.pack(left, bins, sum(items.weight[i] for i in left))
            if found is not None:
                return Packing(tuple(found), bound, proven=True)
    except _OutOfBudget:
        return Packing(tuple(best), bound, proven=False)
    return Packing(tuple(best), bound, proven=True)


def _first_fit(items: Items, order: list[int]) -> list[tuple[int, ...]]:
    """Each item, in `order`, into the first bin it fits (first-fit decreasing when heaviest first)."""
    bins: list[list[int]] = []
    totals: list[int] = []
    for i in order:
        for b, chosen in enumerate(bins):
            if (
                len(chosen) < items.size
                and totals[b] + items.weight[i] <= items.capacity
                and items.partner[i] not in chosen
            ):
                chosen.append(i)
                totals[b] += items.weight[i]
                break
        else:
            bins.append([i])
            totals.append(items.weight[i])
    return [tuple(b) for b in bins]
