"""Multiple choice by likelihood on a KV cache, batched over questions (V*Bench's protocol).

The switch pass (`switch_pass.py`) scores its System-1 rows' options with it, and
`llava_option_losses_batch` does the same on a plain llava-hf model (the agent's "system1" baseline).

SEAL's rule (and `SwitchAdapter.option_losses`'s): after the prompt, every option (its tokens, then EOS)
scores the mean cross-entropy of its tokens, the first predicted from the prompt's last logits. Here the
prompts of a batch are prefilled once (left padding; positions count real tokens only), and all options of
all questions run as one batch on copies of their prompt's cache.

Only the scored positions reach `lm_head`: the prefill keeps its last row, and the option pass passes a
boolean `logits_to_keep` mask (the positions that predict an option's next token), so the vocabulary-wide
logits are [scored tokens, V] in the model's dtype, never [rows, sequence, V]; the log-softmax runs in
float32 on those rows only. At 576 image rows and 8 options on LLaVA-1.5-7B that is kilobytes, not the
0.67 GB of full-sequence float32 logits.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from eval.llava_hf import left_pad

IGNORE_INDEX = -100


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def select_rows(cache, rows: Sequence[int]):
    """A new cache holding `rows` (repeats allowed) of `cache`; `cache` itself is left as it was."""
    picked = copy.copy(cache)
    picked.layers = [copy.copy(layer) for layer in cache.layers]
    picked.batch_select_indices(torch.tensor(list(rows), dtype=torch.long, device=_cache_device(cache)))
    return picked


def _cache_device(cache) -> torch.device:
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None:
            return layer.keys.device
    return torch.device("cpu")


@torch.inference_mode()
def option_losses_on_cache(
    llava, tokenizer, cache, last_logits: torch.Tensor, mask: torch.Tensor, options: Sequence[Sequence[str]]
) -> list[list[float]]:
    """Mean CE of each row's options after its prompt cache (`last_logits` [R, V], `mask` [R, L])."""
    pairs = [(r, o) for r, opts in enumerate(options) for o in opts]
    if not pairs:
        return [[] for _ in options]
    device = last_logits.device
    ids = [tokenizer(o, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for _, o in pairs]
    rows = [r for r, _ in pairs]
    width = max(map(len, ids))
    tokens = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
    targets = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long, device=device)
    for k, seq in enumerate(ids):
        tokens[k, : len(seq)] = targets[k, : len(seq)] = torch.tensor(seq)
    index = torch.tensor(rows, device=device)
    prompt_mask = mask[index]
    real = targets != IGNORE_INDEX
    attention = torch.cat([prompt_mask, real.long()], dim=1)
    positions = prompt_mask.sum(1, keepdim=True) + torch.arange(width, device=device)
    # Position j predicts token j + 1: keep the positions whose next token is a real option token.
    keep = torch.zeros_like(real)
    keep[:, :-1] = real[:, 1:]
    out = llava(
        input_ids=tokens,
        attention_mask=attention,
        position_ids=positions,
        cache=select_rows(cache, rows),
        use_cache=True,
        logits_to_keep=keep,
    )
    per_pair = scored_mean_nll(
        last_logits[index], out.logits, targets[:, 0], targets[:, 1:][real[:, 1:]], real
    )
    grouped: list[list[float]] = [[] for _ in options]
    for (r, _), loss in zip(pairs, per_pair):
        grouped[r].append(loss)
    return grouped


def scored_mean_nll(
    first_logits: torch.Tensor,
    kept_logits: torch.Tensor,
    first_targets: torch.Tensor,
    kept_targets: torch.Tensor,
    real: torch.Tensor,
) -> list[float]:
    """Mean negative log-likelihood per row from only the logits that predict scored tokens.

    `first_logits` [R, V] predict each row's first token (`first_targets` [R]); `kept_logits` [K, V] (row-major
    over the rows' later tokens, as a boolean `logits_to_keep` returns them) predict `kept_targets` [K];
    `real` [R, W] marks each row's tokens. Log-softmax in float32 over these rows only.
    """
    logits = torch.cat([first_logits, kept_logits], dim=0)
    targets = torch.cat([first_targets, kept_targets], dim=0)
    nll = -torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    rows = len(first_targets)
    owner = torch.cat([torch.arange(rows, device=real.device), real[:, 1:].nonzero(as_tuple=True)[0]]).to(
        nll.device
    )
    total = torch.zeros(rows, dtype=nll.dtype, device=nll.device).index_add_(0, owner, nll)
    return (total / real.sum(1).to(nll.device)).tolist()


@torch.inference_mode()
def llava_option_losses_batch(
    model,
    tokenizer,
    input_ids: Sequence[list[int]],
    pixel_values: torch.Tensor | None,
    options: Sequence[Sequence[str]],
) -> list[list[float]]:
    """Option losses on a plain llava-hf model for prompts given as ids (with their image-token runs)."""
    device = next(model.parameters()).device
    ids, mask = left_pad(input_ids, tokenizer.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    kwargs = {}
    if pixel_values is not None:
        kwargs["pixel_values"] = pixel_values.to(device=device, dtype=next(model.parameters()).dtype)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=True, logits_to_keep=1,
        **kwargs,
    )  # fmt: skip
    return option_losses_on_cache(model, tokenizer, out.cache, out.logits[:, -1], mask, options)
