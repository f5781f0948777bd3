"""What trains in `culnig finetune`: freezing all but the chosen module blocks, encoding rows as
the evaluation renders them (chat template when the tokenizer has one), and the loss on the gold
label's token(s) only."""

from __future__ import annotations

from typing import Any

from culnig.errors import CulnigError
from culnig.finetune.data import prompt_text


def block_name(layout, kind: str) -> str:
    """The decoder-layer submodule of a unit: ``mlp`` or ``self_attn`` (from the registry)."""
    return layout.site("gate" if kind == "mlp" else "q").path.split(".")[0]


def freeze_except(model, layout, units) -> dict[str, int]:
    """Turn ``requires_grad`` off everywhere but in the chosen blocks; return the counts."""
    model.requires_grad_(False)
    layers = layout.layers(model)
    for u in units:
        block = layers[u.layer].get_submodule(block_name(layout, u.kind))
        n = sum(p.numel() for p in block.parameters())
        if n != u.n_params:
            raise CulnigError(f"layer {u.layer} {u.kind} block has {n:,} parameters in the loaded "
                              f"model but {u.n_params:,} in the checkpoint ({u.prefix}*)")
        block.requires_grad_(True)
    params = list(model.parameters())  # unique parameters (tied ones once)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in params)}


def trainable_named(model) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CulnigError(f"--device {device}: CUDA is not available; use --device cpu")
    return torch.device(device)


def source_dtype(config: dict) -> str:
    for cfg in (config, config.get("text_config") or {}):
        value = cfg.get("dtype") or cfg.get("torch_dtype")
        if isinstance(value, str) and value in ("float32", "bfloat16", "float16"):
            return value
    return "float32"


# --- batches ----------------------------------------------------------------------------------
def encode_rows(task: str, rows: list[dict], tokenizer, use_chat_template: bool, max_length: int):
    from attribution.encode import encode_item
    from attribution.items import Item

    out = []
    for r in rows:
        item = Item(id=str(r["idx"]), dataset=task, country="", answer=str(r["label"]),
                    prompt=prompt_text(task, r))
        out.append(encode_item(item, tokenizer, use_chat_template=use_chat_template,
                               max_length=max_length))
    return out


def batch_loss(model, encoded, pad_id: int, device):
    """Mean cross-entropy of the gold label tokens of a right-padded batch (one forward pass; the
    LM head runs only at the positions that predict a label token)."""
    import torch
    import torch.nn.functional as F

    lens = [len(e.input_ids) for e in encoded]
    ids = torch.full((len(encoded), max(lens)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, : lens[i]] = torch.tensor(e.input_ids)
        mask[i, : lens[i]] = 1
    keep = sorted({p for e, n in zip(encoded, lens) for p in range(n - e.n_answer, n)})
    col = {p: j for j, p in enumerate(keep)}
    rows, cols, targets = [], [], []
    for i, (e, n) in enumerate(zip(encoded, lens)):
        for k, tok in enumerate(e.answer_ids):
            rows.append(i)
            cols.append(col[n - e.n_answer + k])
            targets.append(tok)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                logits_to_keep=torch.tensor(keep, device=device))
    logits = out.logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    return F.cross_entropy(logits.float(), torch.tensor(targets, device=device))

