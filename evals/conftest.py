"""Loads the rwkveval plugin for ``pytest evals ...`` (the project's own ``pytest`` run does not
collect this folder, so it never asks for a model)."""
pytest_plugins = ("evals.plugin",)
