"""lm-evaluation-harness task definitions for the CULNIG benchmarks.

This folder is an lm-eval include path (``culnig.paths.tasks_dir()``): each benchmark has a
sub-folder with its YAML files and a small ``utils.py``; shared code (prompt texts, data access)
lives in this package.
"""
