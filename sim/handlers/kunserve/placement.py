"""Where a request's KV lives, layer by layer, among a group's members -- and what moves when the group
changes. Pure functions.

A *placement* is a tuple of ``(first layer, end layer, member)`` ranges covering [0, L): a request that ran
alone on member r is ``((0, L, r),)``; one spread over a group whose member s keeps layers [a_s, b_s) has
one range per member. When a (new) group whose member r computes layers ``slices[r]`` takes such a request
over, member r needs the KV of its slice: the overlap of its slice with every range another member holds
moves from that member to r (`moves`); afterwards member r keeps exactly its slice. Fractions are of the
request's blocks (a block holds one token of every layer, so a layer range of n layers is n/L of it).
"""

from __future__ import annotations

from typing import Sequence

Placement = tuple[tuple[int, int, int], ...]


def whole(num_layers: int, member: int) -> Placement:
    """All of a request's KV on one member."""
    return ((0, num_layers, member),)


def spread(slices: Sequence[tuple[int, int]], members: Sequence[int] | None = None) -> Placement:
    """KV spread as a group keeps it: slice r on member ``members[r]`` (default r)."""
    return tuple((a, b, r if members is None else members[r]) for r, (a, b) in enumerate(slices))


def shares(p: Placement, g: int, num_layers: int) -> list[float]:
    """The fraction of the request's KV on each of g members."""
    out = [0.0] * g
    for a, b, m in p:
        out[m] += (b - a) / num_layers
    return out


def moves(p: Placement, slices: Sequence[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """Layers of KV that must move from member s to member r so that r holds ``slices[r]``:
    ``{(s, r): layers}`` (s != r, only non-zero entries)."""
    out: dict[tuple[int, int], int] = {}
    for r, (a, b) in enumerate(slices):
        for c, d, s in p:
            if s == r:
                continue
            n = min(b, d) - max(a, c)
            if n > 0:
                out[(s, r)] = out.get((s, r), 0) + n
    return out


def incoming(p: Placement, slices: Sequence[tuple[int, int]], num_layers: int) -> list[float]:
    """The fraction of the request's KV each member receives to hold its slice."""
    out = [0.0] * len(slices)
    for (_s, r), n in moves(p, slices).items():
        out[r] += n / num_layers
    return out


def origin(p: Placement) -> int:
    """The member holding the most of the request's KV (ties: the lowest), to interleave moves by."""
    sh: dict[int, int] = {}
    for a, b, m in p:
        sh[m] = sh.get(m, 0) + b - a
    return min(sh, key=lambda m: (-sh[m], m))
