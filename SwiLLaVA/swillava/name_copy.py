"""Constrained decoding of the missing-objects names: every name is copied from the question.

SEAL's switch names the objects System 2 must find after its missing-objects sentence. Its training
names are always spans of the question ("What pattern is on the green object?" -> "green object"), but
a small or undertrained switch sometimes reads a name off the image instead ("purple object"), and the
search then looks for the wrong thing. `NameCopyProcessor` masks, once a row has written the whole
sentence, every token that would make the names stop being a list of question spans:

    names := span ("," span)* "." EOS        span := one or more consecutive tokens of the question

The question's own tokens are the source (`Prompt.name_source`: its first line, since LLaVA puts
answer-format instructions such as the short-answer suffix on later lines), so the constraint is a
token-level copy that works with any tokenizer in which a word reads the same inside the question and
inside the list (SentencePiece / Llama: `▁green ▁object` in both). Before and outside the sentence
nothing is constrained: the switch still decides freely whether to answer or to ask for System 2.

The list goes on only where the switch itself would write the separator. Once a name could end, a
switch whose own next token fits no question span is not naming another object (made to start the
sentence about a question it could answer, it goes on "cyan object is plain"): the list ends there.
Without that rule every such name ended with the best token left, the separator, and the switch went
on to name `object`, `or`, `question` after `cyan object`.

Cost: a scan of the question (tens of tokens) per row and step, negligible against a decoding step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor


@dataclass(frozen=True)
class NameListTokens:
    """The list's punctuation as a tokenizer writes it after a name: separator, end, EOS."""

    separator: int
    end: int
    eos: int

    @classmethod
    def of(cls, tokenizer, sentence: str) -> NameListTokens:
        """Read the separator and end ids from `sentence + " x, y."` as the tokenizer writes it.

        Raises when they are not single `,` / `.` tokens: the constraint would then not know where a
        name ends, and the caller must decode without it.
        """
        one = tokenizer(f"{sentence} x", add_special_tokens=False).input_ids
        two = tokenizer(f"{sentence} x, y.", add_special_tokens=False).input_ids
        separator, end = two[len(one)], two[-1]
        if tokenizer.decode([separator]).strip() != "," or tokenizer.decode([end]).strip() != ".":
            raise ValueError("the tokenizer does not write the name list's ',' and '.' as single tokens")
        return cls(separator, end, tokenizer.eos_token_id)


def allowed_name_tokens(
    source: Sequence[int], names: Sequence[int], punctuation: NameListTokens, preferred: int | None = None
) -> list[int]:
    """The tokens that keep `names` (the ids written after the sentence) a prefix of a valid list.

    `preferred`: the token the switch would write unconstrained. Where a name could end and that
    token is neither a continuation of the name nor the list's punctuation, only the end is allowed."""
    if punctuation.end in names:
        return [punctuation.eos]
    current: list[int] = []
    for token in names:
        current = [] if token == punctuation.separator else [*current, token]
    stops = {punctuation.separator, punctuation.end, punctuation.eos}
    if not current:
        return sorted(set(source) - stops)
    n = len(current)
    follow = {
        source[i + n] for i in range(len(source) - n) if list(source[i : i + n]) == current
    } - stops  # fmt: skip
    allowed = follow | {punctuation.separator, punctuation.end}
    if preferred is not None and preferred not in allowed:
        return [punctuation.end]
    return sorted(allowed)


class NameCopyProcessor(LogitsProcessor):
    """Masks the names after `sentence` to spans of each row's question (see the module docstring).

    `input_ids` are the tokens generated so far (what `generate` passes when it starts from
    `inputs_embeds`, and what `switch_pass.greedy_continue` passes). `sentence` is the
    missing-objects sentence's ids: a row is constrained once it has written them all; with
    `sentence=()` every row is constrained from the first token (the pass that starts after it).
    A row whose source is empty is left free.
    """

    def __init__(
        self, sources: Sequence[Sequence[int]], punctuation: NameListTokens, sentence: Sequence[int] = ()
    ):
        self.sources = [list(s) for s in sources]
        self.punctuation = punctuation
        self.sentence = list(sentence)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        k = len(self.sentence)
        preferred = scores.argmax(-1).tolist()
        for row, (generated, source) in enumerate(zip(input_ids.tolist(), self.sources)):
            if not source or len(generated) < k or generated[:k] != self.sentence:
                continue
            allowed = allowed_name_tokens(source, generated[k:], self.punctuation, preferred[row])
            allowed = torch.tensor(allowed, device=scores.device)
            keep = scores[row, allowed]
            scores[row] = float("-inf")
            scores[row, allowed] = keep
        return scores
