"""rwkveval's evaluation suite: one parametrized pytest module per benchmark (``test_*.py``), the
backend interface they speak (:mod:`evals.backend`), shared statistics (:mod:`evals.metrics`),
``--limit`` sampling (:mod:`evals.sampling`), threshold gates (:mod:`evals.thresholds`), model
resolution (:mod:`evals.models`) and the reporting plugin (:mod:`evals.plugin`)."""
