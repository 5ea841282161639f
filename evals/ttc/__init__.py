"""Test-time compute for generation benchmarks: strategies, votes and their reports.

``--strategy`` asks, beside each question's greedy answer, for more candidates: N samples
(``sample``), N samples ranked by a reward model (``best_of_n``), or a step-level search over the
engine's RNN states guided by a process reward (``beam``, ``mcts``; :mod:`engine.search`).
Votes (:mod:`.votes`) choose one answer from the candidates; each is reported as its own metric
beside greedy, with what the strategy cost (tokens generated, prefill tokens the engine ran,
reward-model calls, wall time).

- :mod:`.config`  the options, parsed and cross-checked (``EvalConfig.ttc``)
- :mod:`.votes`   majority, reward-weighted majority, best, min_vote, last_vote
- :mod:`.store`   stored searches and reward scores in the response cache (resume, ``--rescore``)
- :mod:`.run`     :func:`run_strategy`, what a benchmark calls; rows, metrics, protocol
"""
