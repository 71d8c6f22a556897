"""The switch's work for a batch of questions, sharing one prefill of each prompt.

The switch reads every prompt (image rows included) once, followed by SEAL's missing-objects sentence.
That one pass gives, from its KV cache:

* the decision: greedy decoding starts the sentence iff the logits predict each of its tokens;
* the object names of System-2 rows: greedy decoding after the sentence, continuing the cache (copied
  from the question under `name_copy` unless the switch's `copy_names` is off);
* the direct answer of System-1 rows: the cache cut back to the prompt, decoded greedily, with its
  confidence (the geometric mean of its tokens' probabilities, EOS included);
* multiple choice: every option (its tokens, then EOS) on the prompt's cache, mean cross-entropy each.

All of it is batched over questions (left padding; positions count real tokens only), and each piece
equals what `SwitchAdapter.generate` / `option_losses` compute for one question at a time. `switch` is a
`SwitchAdapter`, standalone or attached to a shared model (the FaST agent's switch stage calls these
through `SwitchStage.decide_prompts` and `SwitchAdapter.option_losses_batch`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .likelihood import option_losses_on_cache, positions_from_mask, select_rows


@torch.inference_mode()
def greedy_continue(
    llava,
    cache,
    last_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    logits_processor=None,
) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy tokens after a prefilled cache, and each token's log-probability.

    `last_logits` [R, V] predict the first token; a row stops at EOS (kept in its tokens).
    `logits_processor` (a transformers `LogitsProcessor`) sees the tokens generated so far.
    """
    rows = last_logits.shape[0]
    out: list[list[int]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    done = torch.zeros(rows, dtype=torch.bool, device=last_logits.device)
    generated = torch.zeros(rows, 0, dtype=torch.long, device=last_logits.device)
    positions = mask.sum(1, keepdim=True)
    logits = last_logits
    for step_index in range(max_new_tokens):
        if logits_processor is not None:
            logits = logits_processor(generated, logits.clone())
        token = logits.argmax(-1)
        token_logprob = torch.log_softmax(logits.float(), -1).gather(1, token[:, None])[:, 0]
        token = torch.where(done, torch.full_like(token, pad_id), token)
        generated = torch.cat([generated, token[:, None]], dim=1)
        for r, (t, lp) in enumerate(zip(token.tolist(), token_logprob.tolist())):
            if not done[r]:
                out[r].append(t)
                logprobs[r].append(lp)
        done = done | (token == eos_id)
        if done.all() or step_index == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step = llava(
            input_ids=token.unsqueeze(1),
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        cache, logits, positions = step.cache, step.logits[:, -1], positions + 1
    return out, logprobs


def answer_confidence(logprobs: Sequence[float]) -> float:
    """How sure greedy decoding was of an answer: the geometric mean of its tokens' probabilities."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else 0.0


def option_confidence(losses: Sequence[float]) -> float:
    """How sure likelihood scoring was: the margin between the two most likely options, as the
    difference of their probabilities under a softmax of the negative mean losses (1.0: one option)."""
    if len(losses) < 2:
        return 1.0
    probs = torch.softmax(-torch.tensor(losses, dtype=torch.float64), 0).sort(descending=True).values
    return float(probs[0] - probs[1])


@dataclass
class PassResult:
    starts: list[bool]  # greedy decoding would begin with the sentence
    continuation: dict[int, str]  # row -> decoded text after the sentence (rows that start it)
    direct: dict[int, str]  # row -> greedy answer (requested rows that do not start it)
    direct_confidence: dict[int, float]  # row -> `answer_confidence` of that answer
    option_losses: dict[int, list[float]]  # row -> losses (requested rows that do not start it)


@torch.inference_mode()
def switch_pass(
    switch,
    prompts: Sequence,
    sentence_ids: list[int],
    *,
    force: bool,
    max_new_tokens: int,
    direct_rows: Sequence[int] = (),
    options: dict[int, list[str]] | None = None,
) -> PassResult:
    """Decide, name the objects, answer System-1 rows directly or by options, from one prefill.

    `force`: every row continues after the sentence (System 2 always). `direct_rows` / `options` are
    only served for rows that do not start the sentence.
    """
    options = options or {}
    llava, tok = switch.model.llava, switch.tokenizer
    k = len(sentence_ids)
    out, mask = prefill(switch, [replace(p, input_ids=p.input_ids + sentence_ids) for p in prompts], k + 1)
    logits, cache = out.logits, out.cache
    # Kept logits: the prompt's last position predicts the sentence's first token, and so on.
    predicted = logits[:, :k].argmax(-1)
    matches = (predicted == torch.tensor(sentence_ids, device=predicted.device)).all(1).tolist()
    starts = [True] * len(prompts) if force else matches
    result = PassResult(starts, {}, {}, {}, {})

    on = [r for r, s in enumerate(starts) if s]
    if on:
        texts, _ = greedy_continue(
            llava, select_rows(cache, on), logits[on, -1], mask[on], max_new_tokens=max_new_tokens,
            eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
            logits_processor=switch.names_processor([prompts[r] for r in on], after_sentence=True),
        )  # fmt: skip
        for r, ids in zip(on, texts):
            result.continuation[r] = tok.decode(ids, skip_special_tokens=True).strip()
    off = [r for r, s in enumerate(starts) if not s]
    direct = [r for r in off if r in set(direct_rows)]
    scored = [r for r in off if r in options]
    if direct or scored:
        cache.crop(-k)  # back to the prompts alone
        prompt_mask = mask[:, :-k]
        if direct:
            texts, logprobs = greedy_continue(
                llava, select_rows(cache, direct), logits[direct, 0], prompt_mask[direct],
                max_new_tokens=max_new_tokens, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
            )  # fmt: skip
            for r, ids, lps in zip(direct, texts, logprobs):
                result.direct[r] = tok.decode(ids, skip_special_tokens=True).strip()
                result.direct_confidence[r] = answer_confidence(lps)
        if scored:
            losses = option_losses_on_cache(
                llava,
                tok,
                select_rows(cache, scored),
                logits[scored, 0],
                prompt_mask[scored],
                [options[r] for r in scored],
            )
            result.option_losses.update(zip(scored, losses))
    return result


@torch.inference_mode()
def option_losses_batch(switch, prompts: Sequence, options: Sequence[Sequence[str]]) -> list[list[float]]:
    """`SwitchAdapter.option_losses` for a batch of prompts (e.g. with evidence), one prefill for all."""
    out, mask = prefill(switch, list(prompts), 1)
    return option_losses_on_cache(
        switch.model.llava, switch.tokenizer, out.cache, out.logits[:, -1], mask, options
    )


def prefill(switch, prompts: list, logits_to_keep: int):
    """One left-padded forward over `prompts` with the KV cache kept; returns the output and the mask."""
    batch = switch.collate(prompts)
    mask = batch["attention_mask"]
    out = switch.model.llava(
        inputs_embeds=switch.embed(batch),
        attention_mask=mask,
        position_ids=positions_from_mask(mask),
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
    return out, mask
