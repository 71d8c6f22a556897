"""`python -m fast`: one question, a LLaVA question file, or a V*Bench folder.

    python -m fast --image x.jpg --question "What pattern is on the blue object?" \
        --base CKPT/system1 --switch CKPT/switch --roi CKPT/roi --seg CKPT/seg
    python -m fast --question-file Q.jsonl --image-folder DIR --answers-file A.jsonl \
        --base B --switch SW --roi ROI --seg SEG [--evidence roi+seg] [--num-chunks N --chunk-idx K] [--batch-size B]
    python -m fast --vstar --bench-folder DIR --answers-file A.jsonl --base B --switch SW --roi ROI --seg SEG

Every option is a field of `AgentConfig` (the agent) or `RunOptions` (what to answer, where to write),
parsed by `HfArgumentParser`; `--help` lists them. Batch and V*Bench runs write LLaVA answer JSONL (trace
in `metadata.trace`), `<answers>.traces.jsonl` and `<answers>.config.json` (the AgentConfig, the run
options and the memory report); both resume where they stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from eval.runner import VSTAR_IMAGE_VIEWS, check_run_inputs, quiet_third_party

from .agent import FastAgent
from .config import BITS, DTYPES, EVIDENCE_MODES, AgentConfig
from .run import answer_question_file, answer_vstar, config_path_for, file_stem, save_overlay


@dataclass
class RunOptions:
    """What to answer and where the results go: the command line's options that are not the agent's."""

    image: str | None = field(default=None, metadata={"help": "single question: the image"})
    question: str | None = field(default=None, metadata={"help": "single question: its text"})
    question_file: str | None = field(default=None, metadata={"help": "LLaVA question JSONL"})
    vstar: bool = field(default=False, metadata={"help": "V*Bench multiple choice by likelihood"})
    image_folder: str = field(default="", metadata={"help": "images of --question-file"})
    bench_folder: str | None = field(
        default=None, metadata={"help": "V*Bench folder (<category>/<stem>.jpg + .json)"}
    )
    answers_file: str | None = field(default=None, metadata={"help": "answers JSONL (batch and V*Bench)"})
    traces_file: str | None = field(default=None, metadata={"help": "default: <answers>.traces.jsonl"})
    overlay_dir: str | None = field(
        default=None, metadata={"help": "write a PNG overlay (with a legend) of every System-2 trace here"}
    )
    trace_file: str | None = field(
        default=None,
        metadata={
            "help": "single question: write its trace JSON here (default: fast_traces/<image>_<question>.json)"
        },
    )
    options: list[str] | None = field(default=None, metadata={"help": "single question: score these options"})
    num_chunks: int = 1
    chunk_idx: int = 0
    model_id: str = "fast"
    verbose: bool = field(
        default=False, metadata={"help": "keep the libraries' log chatter (FAST_VERBOSE=1)"}
    )
    temperature: float = field(default=0.0, metadata={"help": "only greedy decoding (0) is supported"})


# How the command line shows some AgentConfig fields (help, choices, an older flag name, a default that
# depends on this machine); every field is an option, named after it (`--seg_decoding`, `--seg-decoding`).
AGENT_OPTIONS: dict[str, dict] = {
    "base": {"help": "the llava-hf System-1 checkpoint the adapters share"},
    "sam": {"help": "SAM directory (default: the one the seg checkpoint names)"},
    "mode": {"choices": ("fast", "system2-always", "system1")},
    "evidence": {"choices": EVIDENCE_MODES},
    "switch_decision": {"choices": ("prefix", "generate")},
    "seg_decoding": {"choices": ("teacher", "generate")},
    "seg_retry_whole_image": {
        "help": "segment on the whole image an object the proposed region yields no mask for"
    },
    "roi_wording": {
        "choices": ("where", "what"),
        "help": "the ROI adapter's stage-1 wording (default: the one it records, else Chain-of-Spot's 'what')",
    },
    "option_image_view": {
        "choices": VSTAR_IMAGE_VIEWS,
        "help": "image of the options scored without evidence (V*Bench; SEAL and the FaST release: unpadded)",
    },
    "device": {"default": "cuda" if torch.cuda.is_available() else "cpu"},
    "dtype": {
        "choices": DTYPES,
        "help": "auto: bf16 on a GPU that supports it, else fp16 on CUDA, fp32 on CPU",
    },
    "bits": {"choices": BITS, "help": "4/8: the shared language model in bitsandbytes 4/8-bit"},
    "answer_max_new_tokens": {"aliases": ["--max-new-tokens"], "help": "the final answer's"},
    "question_suffix": {"help": "appended to every question (e.g. a short-answer hint)"},
    "confidence_threshold": {
        "help": "fast mode: also send System 1's unsure answers (confidence below this) to System 2; 0: off"
    },
    "confidence_option_counts": {
        "help": "fast mode: route by confidence only questions with these numbers of options (0: free-form; default: all)"
    },
    "copy_names": {"help": "decode the switch's missing-object names as spans of the question"},
}


def agent_options_type() -> type:
    """AgentConfig's fields as a dataclass for `HfArgumentParser`, each with its `AGENT_OPTIONS`
    presentation; a field added to AgentConfig becomes an option by itself."""
    hints = typing.get_type_hints(AgentConfig)
    specs = []
    for f in dataclasses.fields(AgentConfig):
        shown = dict(AGENT_OPTIONS.get(f.name, {}))
        default = shown.pop("default", f.default)
        kwargs = {"metadata": {**f.metadata, **shown}}
        if default is not dataclasses.MISSING:
            kwargs["default"] = default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = f.default_factory
        specs.append((f.name, hints[f.name], field(**kwargs)))
    return dataclasses.make_dataclass("AgentOptions", specs)


def build_parser() -> HfArgumentParser:
    """One option per field of `RunOptions` and of `AgentConfig` (HfArgumentParser, as the trainers)."""
    p = HfArgumentParser(
        (RunOptions, agent_options_type()),
        prog="python -m fast",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return p


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The AgentConfig of parsed options (`--mode system2-always` is the config's "system2_always")."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(AgentConfig)}
    return AgentConfig(**{**values, "mode": values["mode"].replace("-", "_")})


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunOptions)})


def check_cli_inputs(args: argparse.Namespace):
    """Every input checked before any model loads (`eval.runner.check_run_inputs`); a bad one exits with
    one line (no traceback) naming it. Returns the single question's image (read here, so an unreadable
    one fails now)."""
    return check_run_inputs(
        {f"--{flag}": getattr(args, flag) for flag in ("base", "switch", "roi", "seg", "sam")},
        image=args.image,
        question=args.question,
        question_file=args.question_file,
        image_folder=args.image_folder,
        bench_folder=args.bench_folder if args.vstar else None,
        answers_file=args.answers_file,
    )


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    single = args.image is not None or args.question is not None
    modes = [single, args.question_file is not None, args.vstar]
    if sum(modes) != 1:
        p.error("give exactly one of: --image with --question, --question-file, --vstar")
    if single and (args.image is None or args.question is None):
        p.error("a single question needs both --image and --question")
    if (args.question_file or args.vstar) and not args.answers_file:
        p.error("--answers-file is required for --question-file and --vstar")
    if args.vstar and not args.bench_folder:
        p.error("--vstar needs --bench-folder")
    if args.temperature != 0:
        p.error("only greedy decoding is supported (--temperature 0)")
    quiet_third_party(args.verbose or None)
    image = check_cli_inputs(args)
    try:
        config = config_from_args(args)
    except ValueError as e:
        p.error(str(e))
    print("[fast] " + config.to_json().replace("\n", " "), file=sys.stderr)
    agent = FastAgent(config)
    print("[fast] " + agent.model.memory.summary(), file=sys.stderr)
    for note in agent.model.token_notes:
        print(f"[fast] token ids: {note}", file=sys.stderr)

    if single:
        name = file_stem(f"{Path(args.image).stem}_{args.question}")
        trace = agent.answer(image, args.question, options=args.options, question_id=name)
        print(trace.readable())
        trace_file = Path(args.trace_file or Path("fast_traces") / f"{name}.json")
        trace_file.parent.mkdir(parents=True, exist_ok=True)
        trace_file.write_text(json.dumps({**trace.to_dict(), "image": str(args.image)}, indent=1))
        print(f"trace: {trace_file}")
        if args.overlay_dir:
            print(f"overlay: {save_overlay(image, trace, args.overlay_dir, name)}")
        return

    record = {
        "agent_config": json.loads(config.to_json()),
        "run_options": asdict(run_options(args)),
        "memory": agent.model.memory.as_dict(),
    }
    if config.roi:
        record["roi_wording"] = {
            "wording": agent.model.roi_config.wording,
            "source": agent.model.roi_wording_source,
        }
    Path(args.answers_file).parent.mkdir(parents=True, exist_ok=True)
    config_path_for(args.answers_file).write_text(json.dumps(record, indent=1))
    common = {
        "traces_file": args.traces_file,
        "num_chunks": args.num_chunks,
        "chunk_idx": args.chunk_idx,
        "model_id": args.model_id,
        "overlay_dir": args.overlay_dir,
    }
    if args.vstar:
        summary = answer_vstar(agent, args.bench_folder, args.answers_file, **common)
    else:
        summary = answer_question_file(
            agent, args.question_file, args.image_folder, args.answers_file, **common
        )
    print(json.dumps(summary))
