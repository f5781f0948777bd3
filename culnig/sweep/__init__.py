"""``culnig sweep CONFIG.yaml``: neuron sets -> masked checkpoints -> lm-eval results, resumably
(:mod:`culnig.sweep.config` reads the config, :mod:`culnig.sweep.run` runs it)."""

from culnig.sweep.config import Checkpoint, ModelSpec, SweepConfig, load_config
from culnig.sweep.run import SweepSummary, plan, run_sweep

__all__ = ["Checkpoint", "ModelSpec", "SweepConfig", "SweepSummary", "load_config", "plan", "run_sweep"]
