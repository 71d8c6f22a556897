"""System-1 answerer: batched, left-padded greedy generation over LLaVA question JSONL.

Writes LLaVA answer JSONL (`question_id`, `prompt`, `text`, `answer_id`, `model_id`, `metadata`),
one line per question, flushed after every batch, through the loop every runner shares
(`eval.runner.run_questions`). A rerun resumes: questions already answered are skipped and a line cut
off by a kill is dropped, so each question is answered exactly once.

    python -m roillava.answer --model-path CKPT --question-file Q.jsonl --image-folder DIR \
        --answers-file A.jsonl [--batch-size 8] [--num-chunks N --chunk-idx K]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from transformers import LogitsProcessor, LogitsProcessorList, StaticCache

from eval.llava_hf import left_pad as left_pad_ids
from eval.runner import run_questions

from .conversation import IMAGE_PLACEHOLDER, conversation_segments, get_template, tokenize_segments
from .data import image_seq_length
from .model import BITS_HELP, DTYPE_CHOICES, DTYPE_HELP, inference_dtype


@dataclass(frozen=True)
class Prompt:
    """One generation request: token ids of the open assistant turn plus its images."""

    input_ids: list[int]
    images: list


def build_turns_prompt(
    turns: list[tuple[str, str | None]], images: list, *, tokenizer, model_config, template: str
) -> Prompt:
    """A multi-turn prompt (last assistant turn open), tokenised exactly as in training."""
    segments = conversation_segments(get_template(template), turns)
    ids, _ = tokenize_segments(
        segments, tokenizer, model_config.image_token_id, image_seq_length(model_config)
    )
    return Prompt(ids, images)


def build_prompt(question: str, images: list, *, tokenizer, model_config, template: str) -> Prompt:
    """The same segment tokenisation as training, with the assistant turn left open."""
    if images and IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER + "\n" + question
    return build_turns_prompt(
        [(question, None)], images, tokenizer=tokenizer, model_config=model_config, template=template
    )


def left_pad(
    prompts: list[Prompt], pad_token_id: int, shared_prefix: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask of `prompts`, padded on the left of each prompt's own part
    (`eval.llava_hf.left_pad`, the padding rule every project shares)."""
    return left_pad_ids([p.input_ids for p in prompts], pad_token_id, shared_prefix)


# Below this many tokens a shared prefix is not worth a forward pass of its own.
MIN_SHARED_PREFIX = 8


def shared_prefix_length(prompts: list[Prompt], image_token_id: int) -> int:
    """How many leading ids all prompts share before their first image (the system prompt and "USER: ").

    At least one id of every prompt is left out, so each row still has a token to start generating from.
    """
    first = prompts[0].input_ids
    limit = min(len(p.input_ids) for p in prompts) - 1
    n = 0
    while n < limit and first[n] != image_token_id and all(p.input_ids[n] == first[n] for p in prompts):
        n += 1
    return n


class PrefixCache:
    """Keys and values of the shared prompt prefix, computed once and reused by every batch of a run.

    Scope it to one run of one model: the stored states are only valid for the weights they came from.
    """

    def __init__(self) -> None:
        self.ids: tuple[int, ...] | None = None
        self.states: list[tuple[torch.Tensor, torch.Tensor]] = []

    def states_for(self, model, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.ids != tuple(ids):
            device = next(model.parameters()).device
            cache = model(input_ids=torch.tensor([ids], device=device), use_cache=True).cache
            self.ids, self.states = tuple(ids), [(layer.keys, layer.values) for layer in cache.layers]
        return self.states


def pixel_values(processor, prompts: list[Prompt]) -> torch.Tensor | None:
    """The processed images of `prompts`, in order (None when there is none)."""
    images = [im for p in prompts for im in p.images]
    return processor.image_processor(images, return_tensors="pt")["pixel_values"] if images else None


@torch.inference_mode()
def generate(
    model,
    processor,
    prompts: list[Prompt],
    *,
    max_new_tokens: int,
    pixels: torch.Tensor | None = None,
    prefix_cache: PrefixCache | None = None,
    logits_processor: LogitsProcessor | None = None,
) -> list[str]:
    """Greedy continuations of `prompts`, decoded without special tokens and stripped.

    `logits_processor` (e.g. `box_grammar.BoxLogitsProcessor`) masks each step's scores; one with a
    `reset()` is reset first, since it keeps the state of one generation.

    Two things keep batches cheap. The prefix all prompts share (the system prompt, up to the first
    image) runs once, not once per row: per batch, or once per run with a `prefix_cache`. And the
    key/value cache is preallocated (static): the default one re-concatenates every row's keys and
    values at each step, a cost that grows with the batch. `pixels` may hold the prompts' processed
    images, computed ahead (see `answer_file`).
    """
    tok = processor.tokenizer
    shared = 0
    if len(prompts) > 1 or prefix_cache is not None:
        shared = shared_prefix_length(prompts, model.config.image_token_id)
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
    ids, mask = left_pad(prompts, tok.pad_token_id, shared)
    device = next(model.parameters()).device
    kwargs = {}
    if pixels is None:
        pixels = pixel_values(processor, prompts)
    if pixels is not None:
        kwargs["pixel_values"] = pixels.to(device=device, dtype=next(model.parameters()).dtype)
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + max_new_tokens)
    if shared:
        states = (prefix_cache or PrefixCache()).states_for(model, prompts[0].input_ids[:shared])
        for layer, (keys, values) in enumerate(states):
            cache.update(
                keys.expand(len(prompts), -1, -1, -1), values.expand(len(prompts), -1, -1, -1), layer
            )
    if logits_processor is not None:
        if hasattr(logits_processor, "reset"):
            logits_processor.reset()
        kwargs["logits_processor"] = LogitsProcessorList([logits_processor])
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        cache=cache,
        # Every batch has a new shape: recompiling for each would cost more than it saves.
        disable_compile=True,
        **kwargs,
    )
    return [t.strip() for t in tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)]


@torch.inference_mode()
def option_losses(
    model, processor, prompt: Prompt, options: list[str], *, pixels: torch.Tensor | None = None
) -> list[float]:
    """Mean cross-entropy of each option's tokens after `prompt`; the lowest is the model's choice.

    V*Bench's likelihood protocol: an option is tokenised as a training answer is (its own segment,
    then `</s>`) and all options run as one right-padded batch over the repeated prompt. Only the
    logits that predict option tokens are kept. `pixels`: the prompt's images already processed
    ([k, 3, S, S], e.g. in another view than the processor's); default: the processor on its images.
    """
    if not options:
        raise ValueError("no options to score")
    tok = processor.tokenizer
    option_ids = [tok(o, add_special_tokens=False).input_ids + [tok.eos_token_id] for o in options]
    n, start = len(options), len(prompt.input_ids)
    width = start + max(map(len, option_ids))
    ids = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    targets = torch.full((n, width), -100, dtype=torch.long)
    for row, opt in enumerate(option_ids):
        end = start + len(opt)
        ids[row, :end] = torch.tensor(prompt.input_ids + opt)
        mask[row, :end] = 1
        targets[row, start:end] = torch.tensor(opt)
    device = next(model.parameters()).device
    kwargs = {}
    if pixels is None and prompt.images:
        pixels = processor.image_processor(prompt.images, return_tensors="pt")["pixel_values"]
    if pixels is not None:
        pixels = pixels.repeat(n, 1, 1, 1)
        kwargs["pixel_values"] = pixels.to(device=device, dtype=next(model.parameters()).dtype)
    # Token j is predicted by the logits at j - 1, so keep positions start-1 .. width-2.
    out = model(
        input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=width - start + 1, **kwargs
    )
    logits = out.logits[:, :-1].float()
    targets = targets[:, start:].to(device)
    ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return (ce.sum(1) / (targets != -100).sum(1)).tolist()


def answer_file(
    model,
    processor,
    question_file: str,
    image_folder: str,
    answers_file: str,
    *,
    template: str = "vicuna_v1",
    batch_size: int = 8,
    max_new_tokens: int = 128,
    model_id: str = "llava",
    num_chunks: int = 1,
    chunk_idx: int = 0,
    progress: bool = True,
    model_signature: str,
) -> dict:
    """Answer every not-yet-answered question of `question_file`; returns counts and timing.

    `model_signature` (`eval.qa_files.model_signature` of the checkpoint paths) goes into each answer's
    fingerprint, so answers of other weights are not reused on a rerun. It is required: a loaded model
    cannot tell which files it came from, and a missing signature let a retrained checkpoint in the
    same folder resume on the old one's answers."""
    prefix_cache = PrefixCache()

    def preprocess(rows: list[dict], images: list[list]) -> tuple[list[list], torch.Tensor | None]:
        flat = [im for ims in images for im in ims]
        pixels = processor.image_processor(flat, return_tensors="pt")["pixel_values"] if flat else None
        return images, pixels

    def solve(rows: list[dict], payload: tuple[list[list], torch.Tensor | None]) -> list[tuple[str, dict]]:
        images, pixels = payload
        # Prompts are tokenised here, not in the loader thread: a fast tokenizer is not safe to share.
        prompts = [
            build_prompt(
                q["text"], ims, tokenizer=processor.tokenizer, model_config=model.config, template=template
            )
            for q, ims in zip(rows, images)
        ]
        texts = generate(
            model, processor, prompts, max_new_tokens=max_new_tokens, pixels=pixels, prefix_cache=prefix_cache
        )
        return [(t, {}) for t in texts]

    return run_questions(
        question_file,
        image_folder,
        answers_file,
        solve,
        batch_size=batch_size,
        model_id=model_id,
        num_chunks=num_chunks,
        chunk_idx=chunk_idx,
        progress=progress,
        prepare=preprocess,
        settings={
            "runner": "answer", "model": model_signature, "template": template, "max_new_tokens": max_new_tokens
        },
    )  # fmt: skip


def load_for_inference(
    model_path: str,
    model_base: str | None = None,
    *,
    device: str = "cpu",
    dtype=torch.float32,
    bits: int = 16,
):
    """A full llava-hf checkpoint, or a PEFT adapter directory on its base, loaded straight to `device`.

    A 16-bit adapter is merged into the base (one plain model, no LoRA overhead per step); on a 4/8-bit
    base it stays a separate peft layer, since merging into quantised weights would round the update away.
    The directories are checked first (`eval.checks`): a damaged one fails in seconds naming the file,
    instead of a loader that can grow without bound on a directory with no config.
    """
    from eval.checks import check_checkpoint

    check_checkpoint(model_base, "model_base")
    check_checkpoint(model_path, "model_path", check_base=model_base is None)

    from .model import llava_processor, load_base

    adapter_cfg = Path(model_path) / "adapter_config.json"
    processor_source = model_path
    if adapter_cfg.exists():
        from eval.llava_hf import attach_lora_adapter

        base = model_base or json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        model = load_base(base, dtype=dtype, bits=bits, device=device)
        model, _ = attach_lora_adapter(model, model_path, "default")  # the agent's attach path, then merge
        if bits == 16:
            model = model.merge_and_unload()
        # Intermediate checkpoints hold the adapter only; the final one also holds the processor.
        if not (Path(model_path) / "processor_config.json").exists():
            processor_source = base
    else:
        model = load_base(model_path, dtype=dtype, bits=bits, device=device)
    from .convert import recorded_aspect_ratio

    # pad (LLaVA-1.5's default here) unless a converted checkpoint recorded its original preprocessing
    processor = llava_processor(processor_source, recorded_aspect_ratio(processor_source))
    return model.eval(), processor


def add_answer_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags every answerer shares (LLaVA's `model_vqa_loader` names)."""
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--question-file", required=True)
    p.add_argument("--image-folder", default="")
    p.add_argument("--answers-file", required=True)
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="only greedy decoding (0) is supported")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)
    p.add_argument("--bits", type=int, choices=(4, 8, 16), default=16, help=BITS_HELP)
    p.add_argument("--verbose", action="store_true", help="keep the libraries' log chatter (FAST_VERBOSE=1)")
    return p


def check_answer_args(args: argparse.Namespace) -> None:
    """Every input of an answerer, checked before the model loads (seconds; one line naming the file):
    the question file (every record), the image folder, the checkpoint(s) and the answers file's lock."""
    from eval.checks import check_checkpoint, check_dir
    from eval.qa_files import AnswersFile, read_questions

    questions = read_questions(args.question_file)
    if any(q.get("image") for q in questions):
        check_dir(args.image_folder or ".", "--image-folder")
    if args.model_base:
        check_checkpoint(args.model_base, "--model-base")
    check_checkpoint(args.model_path, "--model-path", check_base=not args.model_base)
    with AnswersFile(args.answers_file, {}, quiet=True):
        pass  # fails at once if another run is writing it


def answer_errors() -> tuple[type[BaseException], ...]:
    """The errors an answerer reports as one line (bad inputs), not as a traceback."""
    from eval.checks import InputError
    from eval.qa_files import AnswersBusy, QuestionFileError

    return (InputError, QuestionFileError, AnswersBusy, FileNotFoundError)


def load_from_args(args: argparse.Namespace):
    """Model and processor for the parsed answerer flags (greedy only)."""
    if args.temperature != 0:
        raise SystemExit("only greedy decoding is supported (--temperature 0), as in LLaVA-1.5's evaluation")
    dtype = inference_dtype(args.dtype, args.device)
    return load_for_inference(
        args.model_path, args.model_base, device=args.device, dtype=dtype, bits=args.bits
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = add_answer_args(p).parse_args(argv)
    from eval.checks import fail
    from eval.logs import quiet_third_party
    from eval.qa_files import model_signature

    quiet_third_party(args.verbose or None)
    try:
        check_answer_args(args)
    except answer_errors() as e:
        raise fail(e) from None
    model, processor = load_from_args(args)
    summary = answer_file(
        model,
        processor,
        args.question_file,
        args.image_folder,
        args.answers_file,
        template=args.conv_mode,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        model_id=Path(args.model_path).name,
        num_chunks=args.num_chunks,
        chunk_idx=args.chunk_idx,
        model_signature=model_signature(args.model_path, args.model_base),
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
