"""Test helpers shared by the culnig packages (tiny offline models, tokenizers and checkpoints)."""

from culnig.testing.tiny_models import (
    ARCH_NAMES,
    save_tiny_checkpoint,
    tiny_config,
    tiny_model,
    tiny_tokenizer,
)

__all__ = ["ARCH_NAMES", "save_tiny_checkpoint", "tiny_config", "tiny_model", "tiny_tokenizer"]
