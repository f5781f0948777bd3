"""lm-evaluation-harness task definitions for the CULNIG benchmarks.

This folder is an lm-eval include path (``culnig.paths.tasks_dir()``): one sub-package per
dataset holds its builder (``__init__.py``), its lm-eval hooks, its templates and the YAMLs that
``_generate_configs.py`` writes (``README.md``); shared code lives in this package.
"""
