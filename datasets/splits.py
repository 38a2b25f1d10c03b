"""Leak-free, deterministic train/val/test splits.

Samples are split by *group* (camera, site, enterprise, or near-duplicate cluster), never one by
one: frames of one fixed camera are near-duplicates, and a split that puts a camera on both sides
measures memory, not generalisation. Groups are ordered by a seeded hash of their key (not by
database ids), so the same samples and seed give the same split on any machine, and a greedy
assignment keeps both the image ratio and every class's share close to the requested ratios
(stratification), then makes sure each class appears in validation and test where it can.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")
_IMAGES = "\0images"


@dataclass(frozen=True)
class SplitItem:
    sample_id: Hashable
    group: str
    classes: frozenset[str] = field(default_factory=frozenset)


def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """Accept '0.8,0.1,0.1' or a sequence; they must be three non-negative numbers summing to 1."""
    values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, not {text!r}")
    return values[0], values[1], values[2]


def _order_key(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def assign_splits(
    items: Iterable[SplitItem], ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[Hashable, str]:
    """Map every sample id to 'train', 'val' or 'test'; one group never sits on two sides."""
    ratios = parse_ratios(ratios)
    groups: dict[str, list[SplitItem]] = defaultdict(list)
    for item in items:
        groups[item.group].append(item)
    if not groups:
        return {}

    profile: dict[str, Counter[str]] = {}
    for key, members in groups.items():
        counts: Counter[str] = Counter({_IMAGES: len(members)})
        for m in members:
            counts.update(m.classes)
        profile[key] = counts
    total: Counter[str] = Counter()
    for counts in profile.values():
        total.update(counts)

    load: list[Counter[str]] = [Counter() for _ in SPLITS]
    chosen: dict[str, int] = {}

    def cost_delta(split: int, counts: Counter[str]) -> float:
        delta = 0.0
        for name, n in counts.items():
            weight = 2.0 if name == _IMAGES else 1.0
            before = load[split][name] / total[name] - ratios[split]
            after = (load[split][name] + n) / total[name] - ratios[split]
            delta += weight * (after * after - before * before)
        return delta

    order = sorted(groups, key=lambda g: _order_key(seed, g))
    active = [i for i, r in enumerate(ratios) if r > 0]
    for key in order:
        best = min(active, key=lambda s: (cost_delta(s, profile[key]), s))
        chosen[key] = best
        load[best].update(profile[key])

    # Coverage repair: a class missing from val/test moves in with its smallest train group,
    # as long as train keeps at least one group with that class.
    classes = sorted(c for c in total if c != _IMAGES)
    for split in (1, 2):
        if ratios[split] <= 0:
            continue
        for cls in classes:
            if load[split][cls] > 0:
                continue
            holders = [g for g in order if chosen[g] == 0 and profile[g][cls] > 0]
            if len(holders) < 2:
                continue
            move = min(holders, key=lambda g: (profile[g][_IMAGES], _order_key(seed, g)))
            chosen[move] = split
            load[0].subtract(profile[move])
            load[split].update(profile[move])

    return {m.sample_id: SPLITS[chosen[key]] for key, members in groups.items() for m in members}


def near_duplicate_components(hashes: Sequence[int], max_distance: int) -> list[int]:
    """Connected components of the 'Hamming distance <= max_distance' graph over 64-bit hashes.

    Returns, for each input, the index of its component's first member: a stable group label.
    """
    import numpy as np

    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n:
        arr = np.array([h & 0xFFFFFFFFFFFFFFFF for h in hashes], dtype=np.uint64)
        for i in range(n - 1):
            x = np.bitwise_xor(arr[i + 1 :], arr[i])
            dist = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
            for j in np.nonzero(dist <= max_distance)[0]:
                a, b = find(i), find(i + 1 + int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(n)]
