"""culnig: find the neurons an LLM uses for cultural understanding and test them by ablation.

The ``culnig`` package holds what the three product packages share: the architecture registry,
model preparation, the lm-eval entry point and the command line. ``attribution``, ``masking`` and
``culnig_tasks`` are import packages of their own beside it.
"""

__version__ = "0.1.0"
