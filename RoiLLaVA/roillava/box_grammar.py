"""Constrained decoding of the stage-1 box: every finished answer is a usable `[x1, y1, x2, y2]`.

An unconstrained model (a small or undertrained one above all) can write an inverted box, a number
above 1, a fifth number or no closing bracket, and the answerer then falls back to the full image.
`BoxLogitsProcessor` masks, at every step and for every row, the tokens that would make the text
generated so far stop being a prefix of a well-formed box, so a row can only end (EOS) right after
the closing `]` of a box that `roi.parse_roi_box` accepts: exactly four numbers, x1 < x2, y1 < y2,
each side >= `min_side`, all inside [0, 1]. The only remaining failure is running out of
`max_new_tokens` before the `]`; a box is at most `MAX_BOX_CHARS` characters, hence at most that many
tokens with any vocabulary (LLaMA writes every digit as its own token), plus one for EOS.

The grammar is the training answers' format (`str(box)` of a list rounded to 3 decimals, see
`boxes.cos_box_from_params`): `[0.123, 0.5, 1.0, 0.98]`. Numbers are `0.` and 1 to `decimals` digits,
or `1.0`; the separator is a comma and at most one space; at most one space before `[`.

Cost (measured on the toy model, CPU, one thread, batch 16): 0.2-0.45 ms per generation step for
the processor against about 29 ms for the step itself, i.e. about 1 %; with the 32000-id LLaMA
vocabulary and random scores (every state new, the worst case for the cache) 2.6 ms per step.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

GRAMMAR_CHARS = frozenset("0123456789.,[] ")
# Every character a box may need: a vocabulary without one of them could leave a row with no token.
REQUIRED_CHARS = "0123456789.,[]"
MAX_DECIMALS = 3  # the training labels are rounded to 3 decimals
MAX_LEADING_SPACES = 1


def max_box_chars(decimals: int = MAX_DECIMALS) -> int:
    """The longest well-formed box in characters: ` [0.ddd, 0.ddd, 0.ddd, 0.ddd]`."""
    return MAX_LEADING_SPACES + 1 + 4 * (2 + decimals) + 3 * 2 + 1


MAX_BOX_CHARS = max_box_chars()  # 29: with EOS, 30 new tokens always suffice


@dataclass(frozen=True)
class BoxState:
    """Where a prefix stands: before `[` (`opened` False), inside the list, or after `]` (`closed`)."""

    opened: bool = False
    closed: bool = False
    leading_spaces: int = 0
    numbers: tuple[str, ...] = ()  # the finished numbers, as written
    current: str = ""  # the number being written
    space_allowed: bool = False  # right after a comma


class BoxGrammar:
    """Pure-Python prefix validator of the box grammar, with the box constraints on partial numbers.

    A partial number is kept only while some completion of it can still be part of a valid box:
    x1 (y1) needs 1.0 - x1 >= min_side and x1 < 1; x2 (y2) needs x2 > x1 and x2 - x1 >= min_side,
    computed in floats exactly as `parse_roi_box` computes them. Hence every accepted prefix has a
    completion, and `[0.0, 0.0, 1.0, 1.0]` is always one for a fresh prefix.
    """

    def __init__(self, min_side: float, decimals: int = MAX_DECIMALS):
        if not 0 <= min_side < 1:
            raise ValueError(f"min_side must be in [0, 1), got {min_side}")
        if decimals < 1:
            raise ValueError(f"decimals must be >= 1, got {decimals}")
        self.min_side = min_side
        self.decimals = decimals

    # -- numbers -----------------------------------------------------------------------------
    def _number_prefix_ok(self, s: str) -> bool:
        """`s` is a prefix of `0.d{1,decimals}` or `1.0`."""
        if s[0] == "1":
            return "1.0".startswith(s)
        if s[0] != "0" or len(s) > 2 + self.decimals:
            return False
        return len(s) == 1 or (s[1] == "." and (len(s) == 2 or s[2:].isdigit()))

    def _complete(self, s: str) -> bool:
        return s == "1.0" or (
            len(s) >= 3 and s[:2] == "0." and s[2:].isdigit() and len(s) <= 2 + self.decimals
        )

    def _range(self, s: str) -> tuple[float, float]:
        """The smallest and largest value a completion of the partial number `s` can have."""
        if s == "":
            return 0.0, 1.0
        if s[0] == "1":
            return 1.0, 1.0
        digits = s[2:]
        low = float("0." + (digits or "0"))
        high = float("0." + digits + "9" * (self.decimals - len(digits)))
        return low, high

    def _feasible(self, numbers: tuple[str, ...], low: float, high: float) -> bool:
        """Some value in [low, high] can be number `len(numbers)` of a valid box after `numbers`."""
        k = len(numbers)
        if k < 2:  # x1 or y1: the far side can be at most 1.0
            return low < 1.0 and 1.0 - low >= self.min_side
        near = float(numbers[k - 2])
        return high > near and high - near >= self.min_side

    # -- characters --------------------------------------------------------------------------
    def advance(self, state: BoxState | None, text: str) -> BoxState | None:
        """The state after `text`, or None when `text` leaves the grammar."""
        for ch in text:
            if state is None:
                return None
            state = self._step(state, ch)
        return state

    def _step(self, st: BoxState, ch: str) -> BoxState | None:
        if st.closed:
            return None
        if not st.opened:
            if ch == " " and st.leading_spaces < MAX_LEADING_SPACES:
                return BoxState(leading_spaces=st.leading_spaces + 1)
            return BoxState(opened=True, leading_spaces=st.leading_spaces) if ch == "[" else None
        cur = st.current
        if ch.isdigit() or ch == ".":
            new = cur + ch
            if not self._number_prefix_ok(new) or not self._feasible(st.numbers, *self._range(new)):
                return None
            return BoxState(True, False, st.leading_spaces, st.numbers, new, False)
        if ch == " ":
            return (
                BoxState(True, False, st.leading_spaces, st.numbers, "", False) if st.space_allowed else None
            )
        if ch in ",]":
            if not self._complete(cur):
                return None
            value = float(cur)
            if not self._feasible(st.numbers, value, value):
                return None
            numbers = (*st.numbers, cur)
            if ch == ",":
                return (
                    BoxState(True, False, st.leading_spaces, numbers, "", True) if len(numbers) < 4 else None
                )
            return BoxState(True, True, st.leading_spaces, numbers) if len(numbers) == 4 else None
        return None

    def is_prefix(self, text: str) -> bool:
        """`text` can still be completed into a valid box."""
        return self.advance(BoxState(), text) is not None

    def is_complete(self, text: str) -> bool:
        """`text` is a whole valid box (the only point where EOS is allowed)."""
        state = self.advance(BoxState(), text)
        return state is not None and state.closed


def piece_text(piece: str) -> str:
    """A vocabulary piece as text: SentencePiece `▁` and byte-level BPE `Ġ` are spaces."""
    return piece.replace("▁", " ").replace("Ġ", " ")


# Per tokenizer, computed once: the ids whose text uses only grammar characters.
_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def grammar_tokens(tokenizer) -> dict[int, str]:
    """{token id: text} of the tokens made only of `GRAMMAR_CHARS` (special tokens never are)."""
    try:
        return _VOCABULARIES[tokenizer]
    except (KeyError, TypeError):
        pass
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    tokens = {}
    for i, piece in enumerate(pieces):
        text = piece_text(piece) if piece is not None else ""
        if text and i not in special and set(text) <= GRAMMAR_CHARS:
            tokens[i] = text
    missing = set(REQUIRED_CHARS) - set(tokens.values())
    if missing:
        raise ValueError(
            f"the tokenizer has no single token for {''.join(sorted(missing))!r}, so boxes cannot be "
            "constrained: decode them freely (RoiConfig(constrained_box=False), --no-constrained-box)"
        )
    with contextlib.suppress(TypeError):  # a tokenizer that takes no weak reference is not cached
        _VOCABULARIES[tokenizer] = tokens
    return tokens


def can_write_boxes(tokenizer) -> bool:
    """Whether the vocabulary has a single token for every character a box needs (LLaMA's has)."""
    try:
        grammar_tokens(tokenizer)
    except ValueError:
        return False
    return True


# Allowed ids per grammar state, shared by every processor of one tokenizer and grammar (a run creates
# one processor per batch); cleared when full, since a long run meets ever new boxes.
MAX_CACHED_STATES = 100_000
_ALLOWED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _allowed_cache(tokenizer, min_side: float, decimals: int) -> dict:
    try:
        return _ALLOWED.setdefault(tokenizer, {}).setdefault((min_side, decimals), {})
    except TypeError:
        return {}


class BoxLogitsProcessor(LogitsProcessor):
    """Masks every token that would take a row out of the box grammar; EOS only after `]`.

    The row's text is the concatenation of its generated pieces (the decoded text up to leading
    spaces). Allowed ids are cached per grammar state, so a step costs one dictionary lookup per row
    and one write of the scores. A generation starts at the first call after `reset()` (which
    `answer.generate` calls); one processor serves one generation at a time.
    """

    def __init__(self, tokenizer, min_side: float, decimals: int = MAX_DECIMALS):
        if tokenizer.eos_token_id is None:
            raise ValueError("constrained box decoding needs the tokenizer's EOS id")
        self.grammar = BoxGrammar(min_side, decimals)
        self.tokens = grammar_tokens(tokenizer)
        self.eos_token_id = tokenizer.eos_token_id
        self._allowed = _allowed_cache(tokenizer, min_side, decimals)
        self.reset()

    def reset(self) -> None:
        self._length: int | None = None  # the input length at the last call
        self._states: list[BoxState | None] = []

    def allowed_ids(self, state: BoxState) -> torch.Tensor:
        """The ids that keep `state` inside the grammar (EOS alone once the box is closed)."""
        ids = self._allowed.get(state)
        if ids is None:
            if len(self._allowed) >= MAX_CACHED_STATES:
                self._allowed.clear()
            keep = [i for i, t in self.tokens.items() if self.grammar.advance(state, t) is not None]
            if state.closed:
                keep = [self.eos_token_id]
            ids = self._allowed[state] = torch.tensor(keep, dtype=torch.long)
        return ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._length is None:
            self._states = [BoxState()] * input_ids.shape[0]
        elif input_ids.shape[1] != self._length + 1 or input_ids.shape[0] != len(self._states):
            raise RuntimeError("BoxLogitsProcessor was not reset between two generations")
        else:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                state, text = self._states[row], self.tokens.get(token)
                # EOS, padding of a finished row or (never, once masked) a foreign token: the row is done.
                self._states[row] = (
                    None if state is None or text is None else self.grammar.advance(state, text)
                )
        self._length = input_ids.shape[1]
        # Start from -inf and copy back the allowed scores: one full-size write per step.
        masked = torch.full_like(scores, float("-inf"))
        rows, ids = [], []
        for row, state in enumerate(self._states):
            if state is None:  # a finished row: generate pads it whatever it scores
                masked[row] = scores[row]
            else:
                allowed = self.allowed_ids(state)
                rows.append(torch.full_like(allowed, row))
                ids.append(allowed)
        if ids:
            rows_t, ids_t = torch.cat(rows).to(scores.device), torch.cat(ids).to(scores.device)
            masked[rows_t, ids_t] = scores[rows_t, ids_t]
        return masked
