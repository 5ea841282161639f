"""Step-level search over RWKV states: beam search and Monte Carlo tree search.

A reasoning chain is split into steps by a delimiter (default a blank line). A node of the search
tree is one step: its tokens, its text, and the model's state and next-token logits after it. An
RNN's state has a fixed size, so expanding a node forks that state (a copy) and decodes children
from it: the question's prompt is run once, a step's tokens are run once, however many children
follow. ``fork=False`` instead re-runs every node's whole prefix from the zero state (the
baseline the benchmark compares with; the results are the same up to float rounding).

Every decoding row goes through :class:`engine.decoding.Decoder`. Searches of many questions
advance in lockstep, so their rows share decoding batches. Child ``j`` of node ``n`` samples
with seed ``row_seed(seed, n * expand + j)`` (node ids are numbered per question in creation
order), so a search is reproducible and independent of the batch size and of other questions (up
to float rounding: the product forms are chosen per row count). A decoded step hands back its
state only when it ended as a finished step: an answer that ended is never expanded.

Rewards come from the caller: ``score([(question index, [step texts]), ...]) -> [float]`` scores
partial answers (a process reward: the score of a prefix is its last step's score) and complete
ones (the outcome reward is the score of the whole answer). The engine knows nothing of reward
models.

- :func:`beam_search`: expand each of the ``beam_width`` kept nodes into ``expand`` children,
  score them, keep the best ``beam_width`` minus the number of finished answers; stop when that
  many answers are finished or after ``max_steps`` steps (the last step runs to the end).
- :func:`mcts`: ``simulations`` rounds of selection by UCT (``Q + c sqrt(ln N_parent / N)``, ties
  to the older node), expansion of the selected leaf into ``expand`` children, evaluation of each
  child by the process reward or, with ``rollout``, by the outcome reward of a sampled rollout to
  the end, and backpropagation of the values to the root.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .batching import TokensCallback, advance, check_batch_size, common_prefix, on_host
from .decoding import DOCUMENT_END, Decoder, Row, Settings, row_seed
from .errors import InputError, check_ids
from .state import State

Scorer = Callable[[list[tuple[int, list[str]]]], list[float]]
ROLLOUT_SEED_OFFSET = 0x5EED  # rollouts draw from their own seeds, never a child's


@dataclass(frozen=True)
class SearchSettings:
    """Everything that changes a search's result (and so keys a cached one)."""

    strategy: str  # "beam" | "mcts"
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    delimiter: str = "\n\n"
    max_steps: int = 8
    expand: int = 4
    beam_width: int = 4
    simulations: int = 16
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    uct_c: float = math.sqrt(2)
    rollout: bool = False

    def check(self) -> None:
        if self.strategy not in ("beam", "mcts"):
            raise InputError(f"search strategy must be 'beam' or 'mcts', found {self.strategy!r}")
        for name in ("max_new_tokens", "max_steps", "expand", "beam_width", "simulations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be an int >= 1, found {value!r}")
        if not self.delimiter:
            raise InputError("the step delimiter must be a non-empty string")
        Settings(self.max_new_tokens, self.temperature, self.top_p, self.top_k, stop_strs=self.stop,
                 delimiter=self.delimiter).check(2**31)


@dataclass(eq=False)
class Node:
    """One step (the root: the question). ``data`` holds the step's bytes; a terminal step that
    ended on a stop string keeps its text up to ``text_bytes`` (negative: the stop began earlier)."""

    id: int
    question: int
    parent: Node | None
    depth: int
    tokens: list[int]
    data: bytes = b""
    finish_reason: str | None = None  # None for the root; "step" | "stop" | "length"
    text_bytes: int = 0
    generated: int = 0  # tokens generated on the path to here (this step's included)
    state: State | None = None
    logits: torch.Tensor | None = None  # [V]
    score: float | None = None
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.finish_reason in ("stop", "length")

    def path(self) -> list[Node]:
        """The steps from the root's child down to this node."""
        out, node = [], self
        while node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def path_bytes(self) -> bytes:
        return b"".join(n.data for n in self.path())

    def step_texts(self) -> list[str]:
        """The steps' texts, the answer cut before a stop string that ended it."""
        steps = [n.data for n in self.path()]
        if self.finish_reason != "stop":
            return [d.decode("utf-8", errors="replace") for d in steps]
        return cut_steps(steps, sum(map(len, steps)) - len(self.data) + self.text_bytes)

    def release(self) -> None:
        self.state, self.logits = None, None

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "parent": None if self.parent is None else self.parent.id, "depth": self.depth,
                "tokens": list(self.tokens) if self.parent is not None else [], "finish": self.finish_reason,
                "score": self.score, "visits": self.visits, "value": self.value}


@dataclass
class Candidate:
    """A complete (or, at the step limit, unfinished) answer found by a search."""

    steps: list[str]
    text: str
    tokens: list[int]
    finish_reason: str
    score: float  # the reward of the whole answer
    step_scores: list[float] | None  # the process reward of each prefix (None: not computed)
    node: int  # the node id it ends at (-1: a rollout)

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "text": self.text, "tokens": self.tokens, "finish_reason": self.finish_reason,
                "score": self.score, "step_scores": self.step_scores, "node": self.node}


@dataclass
class SearchResult:
    """One question's search: its candidates (creation order), the tree, and what it cost."""

    candidates: list[Candidate]
    tree: list[dict[str, Any]]
    generated_tokens: int = 0
    prefill_tokens: int = 0
    reward_calls: int = 0

    def best(self) -> int:
        """The index of the candidate with the highest score (ties: the first)."""
        return max(range(len(self.candidates)), key=lambda i: (self.candidates[i].score, -i))


def cut_steps(steps: Sequence[bytes], cut: int) -> list[str]:
    """The texts of ``steps`` (their bytes, in order) with everything from byte ``cut`` of their
    concatenation on dropped (a stop string began there); steps left empty are dropped, and at
    least one (possibly empty) text remains."""
    kept, at = [], 0
    for data in steps:
        kept.append(data[:max(0, cut - at)])
        at += len(data)
    return [d.decode("utf-8", errors="replace") for d in kept if d] or [""]


class _Search:
    """The pieces both strategies share: roots, expansion through one decoder, scoring, stats."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], settings: SearchSettings, score: Scorer,
                 *, batch_size: int = 16, fork: bool = True, on_tokens: TokensCallback | None = None):
        settings.check()
        check_batch_size(batch_size, automatic=False)
        self.model, self.settings, self.score_fn, self.fork = on_host(model), settings, score, fork
        self.batch_size, self.on_tokens = batch_size, on_tokens
        V = self.model.config.vocab_size
        self.prompts = []
        for n, p in enumerate(prompts):
            ids = check_ids(p, V, f"prompt {n}")
            if not ids:
                raise InputError(f"prompt {n} is empty; expected at least one token (start with token 0)")
            self.prompts.append(ids)
        n = len(self.prompts)
        self.next_id = [0] * n
        self.nodes: list[list[Node]] = [[] for _ in range(n)]
        self.generated, self.prefill, self.calls = [0] * n, [0] * n, [0] * n
        self.longest_stop = max((len(s.encode("utf-8")) for s in settings.stop), default=0)

    def node(self, question: int, **kwargs: Any) -> Node:
        node = Node(self.next_id[question], question, **kwargs)
        self.next_id[question] += 1
        self.nodes[question].append(node)
        return node

    def _count(self, prompt: int, generated: int) -> None:
        if self.on_tokens is not None:
            self.on_tokens(prompt, generated)

    def roots(self) -> list[Node]:
        """One root per question; with forking, each prompt is run once (a prefix that a chunk
        of questions shares, such as few-shot exemplars, once per chunk)."""
        roots = [self.node(q, parent=None, depth=0, tokens=p) for q, p in enumerate(self.prompts)]
        if not self.fork:
            return roots
        for start in range(0, len(roots), self.batch_size):
            chunk = roots[start:start + self.batch_size]
            seqs = [r.tokens for r in chunk]
            plen = min(common_prefix(seqs), min(len(s) for s in seqs) - 1) if len(chunk) > 1 else 0
            init = None
            if plen:
                init, _ = advance(self.model, [seqs[0][:plen]], on_tokens=self._count)
                init = init.expand(len(chunk))
                self.prefill[chunk[0].question] += plen
            states, last = advance(self.model, [s[plen:] for s in seqs], init, want_last=True, on_tokens=self._count,
                                   consume=True)
            for j, root in enumerate(chunk):
                root.state, root.logits = states.select([j]), last[j]
                self.prefill[root.question] += len(seqs[j]) - plen
        return roots

    def _row(self, node: Node, seed: int, delimiter: str | None, tag: Any) -> Row:
        s = self.settings
        # only a finished step is expanded later: an answer that ended needs no state
        settings = Settings(s.max_new_tokens - node.generated, s.temperature, s.top_p, s.top_k,
                            seed if s.temperature > 0 else None, frozenset({DOCUMENT_END}), s.stop, delimiter,
                            keep_state=frozenset({"step"}) if delimiter is not None else frozenset())
        history = node.path_bytes()[-(self.longest_stop - 1):] if self.longest_stop > 1 else b""
        if self.fork:
            return Row(settings, start=node.state, start_logits=node.logits, tag=tag, history=history)
        prompt = self.prompts[node.question] + [t for n in node.path() for t in n.tokens]
        return Row(settings, prompt=prompt, tag=tag, history=history)

    def _decode(self, rows: list[Row]) -> None:
        Decoder(self.model, max_batch=self.batch_size, on_tokens=self.on_tokens).run(rows)
        for row in rows:
            question = row.tag[0].question
            self.generated[question] += len(row.tokens)
            self.prefill[question] += len(row.prompt)

    def expand(self, jobs: list[Node]) -> list[list[Node]]:
        """``expand`` children of each node in ``jobs`` (one decoding run for all of them)."""
        s = self.settings
        rows = []
        for parent in jobs:
            last_step = parent.depth + 1 >= s.max_steps
            for j in range(s.expand):
                seed = row_seed(s.seed, parent.id * s.expand + j)
                rows.append(self._row(parent, seed, None if last_step else s.delimiter, (parent, j)))
        self._decode(rows)
        children: list[list[Node]] = [[] for _ in jobs]
        at = 0
        for k, parent in enumerate(jobs):
            for row in rows[at:at + s.expand]:
                child = self.node(parent.question, parent=parent, depth=parent.depth + 1, tokens=row.generated,
                                  data=bytes(row.data), finish_reason=row.finish_reason, text_bytes=row.text_bytes,
                                  generated=parent.generated + len(row.tokens))
                if not child.terminal:
                    child.state, child.logits = row.state, row.logits
                parent.children.append(child)
                children[k].append(child)
            at += s.expand
            parent.release()  # its children hold what comes next
        return children

    def rollout(self, nodes: list[Node]) -> list[Row]:
        """One sampled completion to the end from each (non-terminal) node."""
        rows = [self._row(n, row_seed(self.settings.seed + ROLLOUT_SEED_OFFSET, n.id), None, (n, 0)) for n in nodes]
        self._decode(rows)
        return rows

    def score(self, items: list[tuple[int, list[str]]]) -> list[float]:
        if not items:
            return []
        values = [float(v) for v in self.score_fn(items)]
        if len(values) != len(items):
            raise InputError(f"the scorer answered {len(values)} scores for {len(items)} answers")
        for question, _ in items:
            self.calls[question] += 1
        return values

    def candidate(self, node: Node, finish: str | None = None) -> Candidate:
        path = node.path()
        return Candidate(node.step_texts(), "".join(node.step_texts()), [t for n in path for t in n.tokens],
                         finish or node.finish_reason, float(node.score if node.score is not None else node.value),
                         None if self.settings.rollout else [float(n.score) for n in path], node.id)

    def result(self, question: int, candidates: list[Candidate]) -> SearchResult:
        return SearchResult(candidates, [n.record() for n in self.nodes[question]], self.generated[question],
                            self.prefill[question], self.calls[question])


def beam_search(model, prompts: Sequence[Sequence[int]], settings: SearchSettings, score: Scorer, *,
                batch_size: int = 16, fork: bool = True, on_tokens: TokensCallback | None = None) -> list[SearchResult]:
    """Step-level beam search for every prompt (see the module docstring)."""
    search = _Search(model, prompts, settings, score, batch_size=batch_size, fork=fork, on_tokens=on_tokens)
    active = [[root] for root in search.roots()]
    done: list[list[Node]] = [[] for _ in prompts]
    for _ in range(settings.max_steps):
        jobs = [node for beam in active for node in beam]
        if not jobs:
            break
        children = [c for kids in search.expand(jobs) for c in kids]
        for child, value in zip(children, search.score([(c.question, c.step_texts()) for c in children])):
            child.score = value
        for q in range(len(active)):
            kids = [c for c in children if c.question == q]
            done[q].extend(c for c in kids if c.terminal)
            room = max(0, settings.beam_width - len(done[q]))
            alive = sorted((c for c in kids if not c.terminal), key=lambda c: (-c.score, c.id))
            for c in alive[room:]:
                c.release()
            active[q] = alive[:room]
    results = []
    for q in range(len(active)):
        candidates = [search.candidate(n) for n in done[q]]
        candidates += [search.candidate(n, "max_steps") for n in active[q]]
        for n in active[q]:
            n.release()
        results.append(search.result(q, candidates))
    return results


def _uct(child: Node, parent: Node, c: float) -> float:
    return child.value / child.visits + c * math.sqrt(math.log(max(parent.visits, 1)) / child.visits)


def _select(root: Node, c: float) -> Node:
    node = root
    while node.children and not node.terminal:
        parent = node
        node = max(parent.children, key=lambda ch: (_uct(ch, parent, c), -ch.id))
    return node


def _backpropagate(node: Node, visits: int, value: float) -> None:
    while node is not None:
        node.visits += visits
        node.value += value
        node = node.parent


def mcts(model, prompts: Sequence[Sequence[int]], settings: SearchSettings, score: Scorer, *,
         batch_size: int = 16, fork: bool = True, on_tokens: TokensCallback | None = None) -> list[SearchResult]:
    """Monte Carlo tree search over steps for every prompt (see the module docstring)."""
    search = _Search(model, prompts, settings, score, batch_size=batch_size, fork=fork, on_tokens=on_tokens)
    roots = search.roots()
    rollouts: list[list[Candidate]] = [[] for _ in roots]
    for _ in range(settings.simulations):
        leaves = [_select(root, settings.uct_c) for root in roots]
        for leaf in leaves:
            if leaf.terminal:  # a finished answer: its known value again
                _backpropagate(leaf, 1, leaf.score)
        grow = [leaf for leaf in leaves if not leaf.terminal]
        if not grow:
            continue
        children = [c for kids in search.expand(grow) for c in kids]
        _evaluate(search, children, rollouts)
        for child in children:
            child.visits, child.value = 1, child.score
            _backpropagate(child.parent, 1, child.score)
    results = []
    for q, root in enumerate(roots):
        terminal = [n for n in search.nodes[q] if n.terminal]
        candidates = [search.candidate(n) for n in terminal] + rollouts[q]
        if not candidates:  # no answer finished: complete the most visited path
            node = root
            while node.children:
                node = max(node.children, key=lambda ch: (ch.visits, ch.value / max(ch.visits, 1), -ch.id))
            candidates = _rollout_candidates(search, [node], [q])[0] if not node.terminal else [search.candidate(node)]
        for n in search.nodes[q]:
            n.release()
        results.append(search.result(q, candidates))
    return results


def _evaluate(search: _Search, children: list[Node], rollouts: list[list[Candidate]]) -> None:
    """Each new child's value: the process reward of its prefix, or (rollout) the outcome reward
    of a sampled completion from it (a finished child: the reward of its answer)."""
    if not search.settings.rollout:
        for child, value in zip(children, search.score([(c.question, c.step_texts()) for c in children])):
            child.score = value
        return
    done = [c for c in children if c.terminal]
    for child, value in zip(done, search.score([(c.question, c.step_texts()) for c in done])):
        child.score = value
    open_ = [c for c in children if not c.terminal]
    found = _rollout_candidates(search, open_, [c.question for c in open_])
    for child, candidates in zip(open_, found):
        child.score = candidates[0].score
        rollouts[child.question].extend(candidates)


def _rollout_candidates(search: _Search, nodes: list[Node], questions: list[int]) -> list[list[Candidate]]:
    rows = search.rollout(nodes)
    texts = []
    for node, row in zip(nodes, rows):
        steps = node.step_texts()
        if row.text_bytes < 0:  # the stop began in the node's own text: cut it there
            texts.append(cut_steps([n.data for n in node.path()], len(node.path_bytes()) + row.text_bytes))
        else:
            tail = row.text()
            texts.append(steps + ([tail] if tail else []))
    scores = search.score(list(zip(questions, texts)))
    out = []
    for node, row, steps, value in zip(nodes, rows, texts, scores):
        tokens = [t for n in node.path() for t in n.tokens] + row.generated
        out.append([Candidate(steps, "".join(steps), tokens, row.finish_reason, value, None, -1)])
    return out
