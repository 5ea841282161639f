"""Shared prefixes of many contexts: which token runs are computed once, and where each context starts.

RWKV's state after a prefix is a fixed-size snapshot, so a prefix that many contexts share (a
few-shot header, a system prompt, the sentence start of WinoGrande's two options) is run once and
every context continues from its state. :func:`plan` finds these prefixes in contexts sorted
lexicographically, as a tree: a node is a run of tokens computed from its parent's state (the
root: the zero state), and each context starts from the deepest node it lies under. A node is
made where it saves work: ``(its tokens) x (contexts under it - 1) >= MIN_SAVED_TOKENS``. Every
context keeps at least its last token to run itself (its last logits are what it is scored on).

:func:`shards` cuts the contexts into consecutive ranges whose nodes' states fit in memory at once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# a shared prefix is run once when that saves at least this many tokens
MIN_SAVED_TOKENS = 32

Context = tuple[int, ...]


@dataclass(frozen=True)
class Node:
    """A shared prefix: tokens ``context[start:end]``, run from the state of ``parent`` (None: the
    zero state) after ``start`` tokens; ``depth`` is 0 for a child of the root."""

    parent: int | None
    start: int
    end: int
    context: Context
    depth: int

    @property
    def tokens(self) -> Context:
        return self.context[self.start:self.end]


def _shareable_lcp(a: Context, b: Context) -> int:
    """Tokens two contexts share that both could skip: each keeps at least its last token."""
    lo, hi = 0, min(len(a), len(b)) - 1
    while lo < hi:  # binary search with slice comparisons (C loops): 12,000 few-shot prompts in ms
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return max(lo, 0)


def plan(contexts: Sequence[Context]) -> tuple[list[Node], list[tuple[int | None, int]]]:
    """For contexts sorted lexicographically: the shared-prefix nodes, and for each context the
    node it starts from (None: zeros) with that node's length (0 for None).

    Neighbours in sorted order share the longest prefixes, so a range of contexts shares the
    minimum of its neighbours' common prefixes; ranges split where that minimum is reached.
    """
    n = len(contexts)
    lcp = [0] + [_shareable_lcp(contexts[i - 1], contexts[i]) for i in range(1, n)]
    nodes: list[Node] = []
    starts: list[tuple[int | None, int]] = [(None, 0)] * n
    # (lo, hi, base, threshold, parent, depth): contexts[lo:hi] share more than `threshold` tokens
    # pairwise-adjacent; `base` of them are covered by `parent`
    stack = [(0, n, 0, 0, None, 0)]
    while stack:
        lo, hi, base, threshold, parent, depth = stack.pop()
        k = lo
        while k < hi:
            end = k + 1
            while end < hi and lcp[end] > threshold:
                end += 1
            if end - k == 1:
                starts[k] = (parent, base)
            else:
                shared = min(lcp[k + 1:end])  # > threshold
                if (shared - base) * (end - k - 1) >= MIN_SAVED_TOKENS:
                    nodes.append(Node(parent, base, shared, contexts[k], depth))
                    stack.append((k, end, shared, shared, len(nodes) - 1, depth + 1))
                else:  # not worth a node here: look for deeper sharing among them
                    stack.append((k, end, base, shared, parent, depth))
            k = end
    return nodes, starts


def chain(nodes: Sequence[Node], node: int | None) -> list[int]:
    """``node`` and its ancestors, root side first."""
    out = []
    while node is not None:
        out.append(node)
        node = nodes[node].parent
    return out[::-1]


def shards(nodes: Sequence[Node], starts: Sequence[tuple[int | None, int]], max_states: int) -> list[range]:
    """Consecutive ranges of the contexts, each needing at most ``max_states`` node states (a node
    with its ancestors; a node needed by two ranges is run in both)."""
    out, lo, held = [], 0, set()
    for i, (node, _) in enumerate(starts):
        need = set(chain(nodes, node))
        if held and len(held | need) > max_states:
            out.append(range(lo, i))
            lo, held = i, set()
        held |= need
    if lo < len(starts):
        out.append(range(lo, len(starts)))
    return out
