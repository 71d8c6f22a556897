"""Switch inference: decide System 1 / System 2, answer from object evidence, score options by likelihood.

    adapter = SwitchAdapter.from_pretrained("checkpoints/swi-llava-v1.5-7b-lora")
    d = adapter.decide(image, question)              # SwitchDecision: an answer or the missing objects
    adapter.answer_with_evidence(image, question, [("red object", (x, y, w, h))])
    adapter.option_losses(image, question, ["cross", "star"])   # mean CE per option, lower is better

CLI (greedy; the image is padded to a square, as in training, except where V*Bench's protocol scores
options on the unpadded image, see `eval/vstar_bench.py`):

    python -m swillava.infer answer --model-path CKPT --question-file Q.jsonl --image-folder DIR --answers-file A.jsonl
    python -m swillava.infer toy-eval --model-path CKPT --question-file Q.jsonl --annotations ANN.json \
        --image-folder DIR --out metrics.json
    python -m swillava.infer vstar --model-path CKPT --bench-folder DIR [--oracle-evidence]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import LogitsProcessorList

from eval.qa_files import fingerprints, read_questions
from eval.runner import answer_row, batched, run_batches

from .conversation import (
    IMAGE_PLACEHOLDER,
    OBJECT_PLACEHOLDER,
    conversation_segments,
    get_template,
    tokenize_segments,
)
from .data import load_json_records, open_image
from .model import BITS_HELP, DTYPE_CHOICES, DTYPE_HELP, SwiLLaVA, inference_dtype, load_switch
from .name_copy import NameCopyProcessor, NameListTokens
from .objects import (
    MISSING_OBJECTS_PREFIX,
    ObjectInstance,
    check_box,
    check_name,
    crop_object,
    evidence_question,
    expand_objects,
    feature_layout,
)
from .switch_pass import option_losses_batch

Evidence = Sequence[tuple[str, Sequence[float]]]  # (name, [x, y, w, h] in original-image pixels)

# Words and punctuation of the sentence, any spacing between them ("can not" matches "cannot" too).
_MISSING = re.compile(
    r"\s*".join(map(re.escape, re.findall(r"\w+|[^\w\s]", MISSING_OBJECTS_PREFIX))), re.IGNORECASE
)
_AND_LIST = re.compile(r",?\s+and\s+|,", re.IGNORECASE)


def parse_missing_objects(text: str) -> list[str] | None:
    """Object names after SEAL's missing-objects sentence, or None when the sentence is absent.

    Tolerates extra or missing spaces (also before punctuation), case, trailing punctuation and "A, B and C" lists. The list ends at
    the first line break or sentence end. Names are de-duplicated in order; a name that itself contains
    " and " is split (SEAL's names never do).
    """
    m = _MISSING.search(text)
    if m is None:
        return None
    rest = text[m.end() :].split("\n", 1)[0]
    rest = re.split(r"[.!?;](?:\s|$)", rest, maxsplit=1)[0]
    names: list[str] = []
    for part in _AND_LIST.split(rest):
        name = part.strip().strip(".!?;:'\"` ").strip()
        if name and name not in names:
            names.append(name)
    return names


# Three or more consecutive words of the missing-objects sentence: a reply that quotes the sentence
# anywhere but at its start is the switch mixing its two kinds of reply.
_SENTENCE_WORDS = re.findall(r"\w+", MISSING_OBJECTS_PREFIX.lower())
_SENTENCE_TRIGRAMS = {tuple(_SENTENCE_WORDS[k : k + 3]) for k in range(len(_SENTENCE_WORDS) - 2)}
# A phrase of two or more words said twice in a row ("information about information about").
_STUTTER = re.compile(r"\b(\w+(?:\s+\w+)+)\s+\1\b", re.IGNORECASE)
REPLY_KINDS = ("answer", "missing", "garbled")


def switch_reply_kind(text: str) -> str:
    """What a switch reply is: "missing" (SEAL's missing-objects sentence, at the start), "answer" (a
    direct answer) or "garbled": empty, quoting part of the sentence elsewhere, or stuttering. A garbled
    reply is neither kind of reply the switch was trained on, so it must never be returned as an answer.
    """
    stripped = text.strip()
    if not stripped:
        return "garbled"
    match = _MISSING.search(stripped)
    if match is not None and match.start() == 0:
        return "missing"
    words = re.findall(r"\w+", stripped.lower())
    if any(tuple(words[k : k + 3]) in _SENTENCE_TRIGRAMS for k in range(len(words) - 2)):
        return "garbled"
    if _STUTTER.search(stripped):
        return "garbled"
    return "answer"


@dataclass(frozen=True)
class SwitchDecision:
    """The switch probe's outcome: a System-1 answer, or the objects System 2 must find."""

    text: str
    missing_objects: list[str] | None

    @property
    def needs_system2(self) -> bool:
        return self.missing_objects is not None

    @property
    def answer(self) -> str | None:
        return None if self.needs_system2 else self.text


@dataclass
class Prompt:
    """One request: ids with feature runs, the padded image and the object crops with their layout."""

    input_ids: list[int]
    pixel_values: torch.Tensor  # [3, S, S]
    image_long: bool
    crops: torch.Tensor  # [n, 3, S, S]
    object_long: list[bool]
    name_source: list[int] = field(default_factory=list)  # the question's first line: names copy from it


class SwitchAdapter:
    """A loaded switch model and its processor; every method is greedy / deterministic."""

    def __init__(
        self,
        model: SwiLLaVA,
        processor,
        *,
        template: str | None = None,
        max_new_tokens: int = 200,
        copy_names: bool = True,
    ):
        """`copy_names`: decode the missing objects' names as spans of the question (`name_copy`)."""
        self.model = model.eval()
        self.processor = processor
        self.template = template or model.swi_config.template
        self.max_new_tokens = max_new_tokens
        self.copy_names = copy_names
        self.crop_size = processor.image_processor.crop_size["height"]

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        model_base: str | None = None,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        bits: int = 16,
        **kwargs,
    ) -> SwitchAdapter:
        model, processor = load_switch(path, model_base, device=device, dtype=dtype, bits=bits)
        return cls(model, processor, **kwargs)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- prompts ------------------------------------------------------------------------------------
    def build_prompt(
        self, image: Image.Image, question: str, objects: Evidence = (), *, pixel_values=None
    ) -> Prompt:
        """`"<image>\\n" + question`, with SEAL's evidence prefix and crops when objects are given.

        The image is padded to a square as in training, unless the caller passes its own processed
        `pixel_values` [3, S, S] (V*Bench scores options without evidence on the unpadded image).
        """
        if OBJECT_PLACEHOLDER in question:
            raise ValueError(f"the question contains {OBJECT_PLACEHOLDER}; pass objects as (name, box) pairs")
        from eval.images import to_rgb

        image = to_rgb(image)
        width, height = image.size
        instances = []
        for k, (name, box) in enumerate(objects):
            try:
                instances.append(ObjectInstance(check_name(name), check_box(list(box), width, height)))
            except ValueError as e:
                raise ValueError(f"evidence object {k}: {e}") from None
        image_long, object_long = feature_layout(len(instances), "infer")
        text = (
            IMAGE_PLACEHOLDER
            + "\n"
            + evidence_question(question.replace(IMAGE_PLACEHOLDER, "").strip(), len(instances))
        )
        turns = expand_objects([(text, None)], instances, width, height)
        segments = conversation_segments(get_template(self.template), turns)
        ids, _ = tokenize_segments(
            segments,
            self.tokenizer,
            self.model.token_layout(),
            image_long=image_long,
            object_long=object_long,
        )
        proc = self.processor.image_processor
        pixels = (
            proc([image], return_tensors="pt")["pixel_values"][0] if pixel_values is None else pixel_values
        )
        crops = torch.zeros(0, *pixels.shape)
        if instances:
            crops = [
                crop_object(image, o.box, self.crop_size, self.model.swi_config.patch_scale)
                for o in instances
            ]
            crops = proc(crops, return_tensors="pt")["pixel_values"]
        asked = question.replace(IMAGE_PLACEHOLDER, "").strip().split("\n", 1)[0]  # instructions follow
        source = self.tokenizer(asked, add_special_tokens=False)
        return Prompt(ids, pixels, image_long, crops, object_long, source.input_ids)

    def collate(self, prompts: list[Prompt]) -> dict[str, torch.Tensor]:
        """Left-padded ids and fixed object slots (as many as the largest request has), on the device."""
        n, length = len(prompts), max(len(p.input_ids) for p in prompts)
        slots = max(len(p.object_long) for p in prompts)
        size = prompts[0].pixel_values.shape
        batch = {
            "input_ids": torch.full((n, length), self.tokenizer.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((n, length), dtype=torch.long),
            "pixel_values": torch.stack([p.pixel_values for p in prompts]),
            "image_long": torch.tensor([p.image_long for p in prompts]),
            "object_pixel_values": torch.zeros(n, slots, *size),
            "object_present": torch.zeros(n, slots, dtype=torch.bool),
            "object_long": torch.zeros(n, slots, dtype=torch.bool),
        }
        for row, p in enumerate(prompts):
            k = len(p.input_ids)
            batch["input_ids"][row, length - k :] = torch.tensor(p.input_ids)
            batch["attention_mask"][row, length - k :] = 1
            m = len(p.object_long)
            batch["object_pixel_values"][row, :m] = p.crops
            batch["object_present"][row, :m] = True
            batch["object_long"][row, :m] = torch.tensor(p.object_long, dtype=torch.bool)
        dtype = next(self.model.parameters()).dtype
        return {
            k: v.to(self.device, dtype=dtype if v.is_floating_point() else None) for k, v in batch.items()
        }

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The input embeddings of a `collate`d batch (image and object feature rows in place)."""
        return self.model.embed_multimodal(
            batch["input_ids"],
            batch["pixel_values"],
            None,
            batch["image_long"],
            batch["object_pixel_values"],
            batch["object_present"],
            batch["object_long"],
        )

    # Older names of `collate` / `embed`, which tests written against them still call.
    _batch = collate
    _embed = embed

    # --- generation ---------------------------------------------------------------------------------
    def names_processor(self, prompts: Sequence[Prompt], *, after_sentence: bool) -> NameCopyProcessor | None:
        """The names constraint for `prompts` (None when `copy_names` is off): from the first token
        (`after_sentence`, a pass that starts after the sentence) or once a row has written it."""
        if not self.copy_names:
            return None
        sentence = [] if after_sentence else self.sentence_ids()
        punctuation = NameListTokens.of(self.tokenizer, MISSING_OBJECTS_PREFIX)
        return NameCopyProcessor([p.name_source for p in prompts], punctuation, sentence)

    def sentence_ids(self) -> list[int]:
        """SEAL's missing-objects sentence as the switch writes it (no special tokens)."""
        return self.tokenizer(MISSING_OBJECTS_PREFIX, add_special_tokens=False).input_ids

    @torch.inference_mode()
    def generate(self, prompts: list[Prompt], max_new_tokens: int | None = None) -> list[str]:
        """Greedy continuations, batched with left padding; stops at EOS. Names after the
        missing-objects sentence are copied from the question unless `copy_names` is off."""
        if not prompts:
            return []
        batch = self.collate(prompts)
        processor = self.names_processor(prompts, after_sentence=False)
        out = self.model.llava.generate(
            inputs_embeds=self.embed(batch),
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([processor] if processor else []),
        )
        # With only inputs_embeds, generate returns just the new tokens.
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def decide_batch(self, items: Sequence[tuple[Image.Image, str]]) -> list[SwitchDecision]:
        texts = self.generate([self.build_prompt(image, q) for image, q in items])
        return [SwitchDecision(t, parse_missing_objects(t)) for t in texts]

    def decide(self, image: Image.Image, question: str) -> SwitchDecision:
        """SEAL's switch probe: the long (padded) image alone; greedy."""
        return self.decide_batch([(image, question)])[0]

    def answer_with_evidence_batch(self, items: Sequence[tuple[Image.Image, str, Evidence]]) -> list[str]:
        return self.generate([self.build_prompt(image, q, objs) for image, q, objs in items])

    def answer_with_evidence(self, image: Image.Image, question: str, objects: Evidence) -> str:
        """Answer with SEAL's evidence prompt: crops (1.2x context) and locations of `objects`."""
        return self.answer_with_evidence_batch([(image, question, objects)])[0]

    def option_losses_batch(
        self, prompts: Sequence[Prompt], options: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """`option_losses` for a batch of prompts (e.g. with evidence), one prefill for all."""
        return option_losses_batch(self, prompts, options)

    # --- likelihood multiple choice -----------------------------------------------------------------
    def option_ids(self, options: Sequence[str]) -> list[list[int]]:
        """Each option tokenised as a training answer is: its text, then EOS."""
        return [
            self.tokenizer(o, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
            for o in options
        ]

    @torch.inference_mode()
    def option_losses(
        self,
        image: Image.Image,
        question: str,
        options: Sequence[str],
        objects: Evidence = (),
        *,
        pixel_values=None,
    ) -> list[float]:
        """Mean CE of each option's tokens after the prompt (SEAL's likelihood rule); the lowest is the choice.

        The prompt runs once; its KV cache is repeated over the options, which run as one batch. Only the
        positions that predict an option token reach `lm_head` (the prompt's last one, then a boolean
        `logits_to_keep` mask), so the vocabulary-wide logits are [option tokens, V] in the model's dtype;
        the log-softmax runs in float32 over those rows only.
        `pixel_values`: the image's processed pixels in another view than the padded one.
        """
        if not options:
            raise ValueError("no options to score")
        batch = self.collate([self.build_prompt(image, question, objects, pixel_values=pixel_values)])
        prefix = self.model.llava(
            inputs_embeds=self.embed(batch),
            attention_mask=batch["attention_mask"],
            use_cache=True,
            logits_to_keep=1,
        )
        cache, last = prefix.cache, prefix.logits[:, -1]
        ids = self.option_ids(options)
        n, width, plen = len(ids), max(map(len, ids)), batch["input_ids"].shape[1]
        tokens = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device)
        real = torch.zeros((n, width), dtype=torch.bool, device=self.device)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq)
            real[row, : len(seq)] = True
        cache.batch_repeat_interleave(n)
        mask = torch.cat([batch["attention_mask"].expand(n, -1), real.long()], dim=1)
        positions = torch.arange(plen, plen + width, device=self.device).expand(n, -1)
        # Token j is predicted by the position before it (the prompt's last for j = 0): keep position j
        # where token j + 1 is real.
        keep = torch.zeros_like(real)
        keep[:, :-1] = real[:, 1:]
        out = self.model.llava(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        logits = torch.cat([last.expand(n, -1), out.logits], dim=0)
        targets = torch.cat([tokens[:, 0], tokens[:, 1:][real[:, 1:]]])
        nll = -torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
        owner = torch.cat([torch.arange(n, device=real.device), real[:, 1:].nonzero(as_tuple=True)[0]])
        total = torch.zeros(n, dtype=nll.dtype, device=nll.device).index_add_(0, owner.to(nll.device), nll)
        return (total / real.sum(1).to(nll.device)).tolist()


# --- runners ---------------------------------------------------------------------------------------------
def answer_questions(
    adapter: SwitchAdapter,
    question_file: str,
    image_folder: str,
    answers_file: str,
    *,
    batch_size: int = 8,
    model_signature: str,
    progress: bool = True,
) -> dict:
    """Switch decisions for LLaVA question JSONL, written as LLaVA answer JSONL plus the decision.

    Questions and answers go through `eval.qa_files` and the loop every runner shares (`eval.runner`):
    bad records fail naming file:line, the answers file is locked, a rerun resumes and redoes questions
    that changed, and a question whose image is missing or unreadable gets `metadata.error` instead of
    stopping the run.
    """
    questions = read_questions(question_file)
    settings = {
        "runner": "swillava.answer",
        "model": model_signature,
        "max_new_tokens": adapter.max_new_tokens,
        "copy_names": adapter.copy_names,
    }

    def load(batch: list[dict]) -> list[tuple[dict, Image.Image | None, str | None]]:
        loaded = []
        for q in batch:
            try:
                if not q.get("image"):
                    raise FileNotFoundError(f"question has no 'image' ({questions.where[q['question_id']]})")
                loaded.append((q, open_image(Path(image_folder) / q["image"]), None))
            except OSError as e:
                loaded.append((q, None, str(e)))
        return loaded

    def answer_batch(batch: list[dict], loaded) -> list[dict]:
        readable = [(q, image) for q, image, error in loaded if error is None]
        decisions = iter(adapter.decide_batch([(im, q["text"]) for q, im in readable]) if readable else [])
        rows = []
        for q, _, error in loaded:
            d = next(decisions) if error is None else None
            rows.append(
                answer_row(
                    q, d.text if d else "", "swillava", {"error": error} if error else {},
                    needs_system2=d.needs_system2 if d else None,
                    missing_objects=d.missing_objects if d else None,
                )
            )  # fmt: skip
        return rows

    return run_batches(
        questions, answers_file, fingerprints(questions, image_folder, settings), answer_batch,
        batch_size=batch_size, load=load, desc="switch", progress=progress,
    )  # fmt: skip


def toy_switch_metrics(
    adapter: SwitchAdapter,
    question_file: str,
    annotations_file: str,
    image_folder: str,
    *,
    batch_size: int = 16,
) -> dict:
    """The toy world's switch metrics: F1 of "needs System 2" (truth: hard questions), exact
    object names on System-2 decisions, hard accuracy with the true target as evidence, easy accuracy direct.
    """
    from eval.toy import normalize_short_answer

    annotations = json.loads(Path(annotations_file).read_text())
    questions = load_json_records(Path(question_file))
    tp = fp = fn = names_ok = n_sys2 = 0
    easy = {"n": 0, "ok": 0}
    hard = {"n": 0, "ok": 0}
    start = time.perf_counter()
    for batch in batched(questions, batch_size):
        images = [open_image(Path(image_folder) / q["image"]) for q in batch]
        anns = [annotations[q["question_id"]] for q in batch]
        decisions = adapter.decide_batch([(im, q["text"]) for im, q in zip(images, batch)])
        evidence = [
            (im, q["text"], [(a["target"]["name"], a["target"]["bbox"])])
            for im, q, a in zip(images, batch, anns)
            if a["difficulty"] == "hard"
        ]
        hard_answers = iter(adapter.answer_with_evidence_batch(evidence))
        for d, a in zip(decisions, anns):
            is_hard = a["difficulty"] == "hard"
            tp += d.needs_system2 and is_hard
            fp += d.needs_system2 and not is_hard
            fn += (not d.needs_system2) and is_hard
            if d.needs_system2:
                n_sys2 += 1
                names_ok += d.missing_objects == [a["target"]["name"]]
            if is_hard:
                hard["n"] += 1
                hard["ok"] += normalize_short_answer(next(hard_answers)) == normalize_short_answer(
                    a["answer"]
                )
            else:
                easy["n"] += 1
                easy["ok"] += (not d.needs_system2) and normalize_short_answer(
                    d.text
                ) == normalize_short_answer(a["answer"])
    seconds = time.perf_counter() - start
    return {
        "f1_system2": 2 * tp / max(1, 2 * tp + fp + fn),
        "object_names_exact": names_ok / max(1, n_sys2),
        "acc_hard_oracle_evidence": hard["ok"] / max(1, hard["n"]),
        "acc_easy_direct": easy["ok"] / max(1, easy["n"]),
        "n_easy": easy["n"],
        "n_hard": hard["n"],
        "n_system2_decisions": n_sys2,
        "seconds": seconds,
    }


def vstar_losses(
    adapter: SwitchAdapter,
    bench_folder: str,
    *,
    oracle_evidence: bool = False,
    image_view: str | None = None,
) -> dict:
    """V*Bench multiple choice by likelihood (the folder read by `eval.vstar_bench`, options[0] correct).

    Without evidence the options are scored on `image_view` (default: the unpadded image, as SEAL
    and the FaST release do); with `oracle_evidence` (the annotated boxes) on the padded image, as
    SEAL scores a question it searched.
    """
    from eval.metrics import vstar_accuracy
    from eval.vstar_bench import VSTAR_DEFAULT_IMAGE_VIEW, read_vstar_bench, vstar_pixel_values

    image_view = image_view or VSTAR_DEFAULT_IMAGE_VIEW
    bench = read_vstar_bench(bench_folder)
    bench.raise_if_invalid()
    per_type: dict[str, list[list[float]]] = {}
    for q in bench.questions:
        if not q.image.is_file():
            raise FileNotFoundError(f"{q.question_id}: image not found: {q.image}")
        image = open_image(q.image)
        objects = list(zip(q.target_object, q.bbox)) if oracle_evidence else []
        pixels = None
        if not objects:
            pixels = vstar_pixel_values(adapter.processor.image_processor, [image], image_view)[0]
        losses = adapter.option_losses(image, q.question, q.options, objects, pixel_values=pixels)
        per_type.setdefault(q.category, []).append(losses)
    everything = [row for rows in per_type.values() for row in rows]
    return {
        "accuracy": vstar_accuracy(everything) if everything else 0.0,
        "per_type": {k: vstar_accuracy(v) for k, v in per_type.items()},
        "questions": len(everything),
        "image_view": "padded" if oracle_evidence else image_view,
    }


def check_infer_args(args: argparse.Namespace) -> None:
    """Every input checked before the model loads; a bad one exits with one line naming it."""
    from eval.checks import InputError, check_checkpoint, check_dir, check_file, fail
    from eval.qa_files import AnswersBusy, AnswersFile, QuestionFileError

    try:
        if args.model_base:
            check_checkpoint(args.model_base, "--model-base")
        check_checkpoint(args.model_path, "--model-path", check_base=not args.model_base)
        if args.command in ("answer", "toy-eval"):
            read_questions(args.question_file)
            check_dir(args.image_folder, "--image-folder")
        if args.command == "toy-eval":
            check_file(args.annotations, "--annotations")
        if args.command == "vstar":
            check_dir(args.bench_folder, "--bench-folder")
        if args.command == "answer":
            with AnswersFile(args.answers_file, {}, quiet=True):
                pass
    except (InputError, QuestionFileError, AnswersBusy, FileNotFoundError) as e:
        raise fail(e) from None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("answer", "toy-eval", "vstar"):
        s = sub.add_parser(name)
        s.add_argument("--model-path", required=True)
        s.add_argument(
            "--model-base", default=None, help="base for a LoRA/projector checkpoint (default: recorded)"
        )
        s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        s.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)
        s.add_argument("--bits", type=int, choices=(4, 8, 16), default=16, help=BITS_HELP)
        s.add_argument("--max-new-tokens", type=int, default=200)
        s.add_argument("--batch-size", type=int, default=8)
        s.add_argument(
            "--no-copy-names",
            dest="copy_names",
            action="store_false",
            help="decode the missing objects' names freely (default: only spans of the question)",
        )
        if name in ("answer", "toy-eval"):
            s.add_argument("--question-file", required=True)
            s.add_argument("--image-folder", required=True)
        if name == "answer":
            s.add_argument("--answers-file", required=True)
        if name == "toy-eval":
            s.add_argument("--annotations", required=True)
            s.add_argument("--out", default=None, help="write the metrics JSON here too")
        if name == "vstar":
            s.add_argument("--bench-folder", required=True)
            s.add_argument(
                "--oracle-evidence", action="store_true", help="feed the annotated boxes as evidence"
            )
            s.add_argument(
                "--image-view",
                choices=("unpadded", "padded"),
                default="unpadded",
                help="image of the options scored without evidence (SEAL: unpadded)",
            )
    args = p.parse_args(argv)
    check_infer_args(args)
    adapter = SwitchAdapter.from_pretrained(
        args.model_path,
        args.model_base,
        device=args.device,
        dtype=inference_dtype(args.dtype, args.device),
        bits=args.bits,
        max_new_tokens=args.max_new_tokens,
        copy_names=args.copy_names,
    )
    if args.command == "answer":
        from eval.qa_files import model_signature

        result = answer_questions(
            adapter, args.question_file, args.image_folder, args.answers_file, batch_size=args.batch_size,
            model_signature=model_signature(args.model_path, args.model_base),
        )  # fmt: skip
    elif args.command == "toy-eval":
        result = toy_switch_metrics(
            adapter, args.question_file, args.annotations, args.image_folder, batch_size=args.batch_size
        )
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1))
    else:
        result = vstar_losses(
            adapter, args.bench_folder, oracle_evidence=args.oracle_evidence, image_view=args.image_view
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
