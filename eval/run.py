"""Benchmark runner: prepare the questions, answer them (s1 | cos | fast), merge the chunks, score.

    python -m eval.run BENCH --mode s1 --model-path CKPT [--batch-size 8] [--gpus 0,1,2,3]
    bash eval/BENCH.sh --mode cos --model-path BASE --roi-path ROI_ADAPTER
    bash eval/BENCH.sh --mode fast --model-path BASE --switch-path SW --roi-path ROI --seg-path SEG

BENCH is one of vqav2, gqa, textvqa, pope, mme, sqa, seed, mmvet, vstar (protocols: eval/README.md).

Steps, each safe to rerun:
1. prepare: the benchmark's question file → `answers/[<split>/]<ckpt>/questions.jsonl` (protocol suffix
   ensured, repeated ids made unique);
2. answer chunk K of N into `<N>_<K>.jsonl` (greedy, batched, left-padded; a rerun resumes). `--gpus`
   runs every chunk at once, one process per listed device, as LLaVA's scripts do;
3. once every chunk file is complete: concatenate them into `merge.jsonl`, check it against the
   questions (missing / duplicate / unknown ids, empty or too-long predictions, image errors: all
   counted), score it and write `metrics.json` plus the benchmark's official submission files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from transformers import HfArgumentParser

from roillava.wording import ROI_WORDINGS, recorded_region_only, resolve_roi_wording  # torch-free

from .answers import answered_ids, merge_files, read_answers
from .benchmarks import BENCHMARKS, Benchmark, BenchPaths, ScoreInput, source_id
from .checks import InputError, check_checkpoint, fail
from .qa_files import AnswersBusy, QuestionFileError, model_signature, read_questions
from .runner import chunk
from .vstar_bench import VSTAR_DEFAULT_IMAGE_VIEW, VSTAR_IMAGE_VIEWS

REPO = Path(__file__).resolve().parents[1]

MODES = ("s1", "cos", "fast")
DEFAULT_DATA_ROOT = REPO / "playground" / "data" / "eval"


@dataclass
class RunConfig:
    """One invocation: every field but `bench` (the positional argument) is an option of the same name
    (`--model-path`, parsed by `HfArgumentParser`); saved next to the answers and in metrics.json."""

    model_path: str = field(metadata={"help": "the LLaVA-1.5 (System-1) checkpoint; the base in cos/fast"})
    mode: str = field(default="s1", metadata={"choices": MODES})
    model_base: str | None = field(
        default=None, metadata={"help": "base of a LoRA --model-path (default: the adapter's record)"}
    )
    roi_path: str | None = field(default=None, metadata={"help": "ROI adapter (cos, fast)"})
    switch_path: str | None = field(default=None, metadata={"help": "switch adapter (fast)"})
    seg_path: str | None = field(default=None, metadata={"help": "seg adapter (fast)"})
    evidence: str | None = field(
        default=None, metadata={"help": "fast: which System-2 evidence to use, e.g. roi+seg"}
    )
    ckpt_name: str | None = field(
        default=None, metadata={"help": "answers go to answers/[<split>/]<ckpt-name>/"}
    )
    data_root: str | None = field(default=None, metadata={"help": f"default {DEFAULT_DATA_ROOT}"})
    bench_dir: str | None = field(
        default=None, metadata={"help": "default <data-root>/<LLaVA folder of the benchmark>"}
    )
    split: str | None = field(
        default=None, metadata={"help": "VQAv2/GQA question split (file name without .jsonl)"}
    )
    question_file: str | None = None
    image_folder: str | None = None
    annotations: str | None = field(
        default=None, metadata={"help": "ground truth, if not at the benchmark's usual place"}
    )
    batch_size: int = 8
    max_new_tokens: int | None = field(default=None, metadata={"help": "default: the benchmark's"})
    num_chunks: int = 1
    chunk_idx: int = 0
    gpus: str | None = field(
        default=None, metadata={"help": "comma-separated devices: run one chunk per device, then score"}
    )
    conv_mode: str = "vicuna_v1"
    temperature: float = field(default=0.0, metadata={"help": "only greedy decoding (0) is supported"})
    device: str | None = field(default=None, metadata={"help": "default cuda when available, else cpu"})
    dtype: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "bf16", "fp16", "fp32"),
            "help": "auto: bf16 on a GPU that supports it, else fp16 on CUDA, fp32 on CPU",
        },
    )
    bits: int = field(
        default=16,
        metadata={"choices": (4, 8, 16), "help": "4/8: the language model in bitsandbytes 4/8-bit"},
    )
    roi_wording: str | None = field(
        default=None,
        metadata={
            "choices": ROI_WORDINGS,
            "help": "ROI stage-1 wording; default: the one the ROI checkpoint records (else Chain-of-Spot's 'what')",
        },
    )
    vstar_image_view: str = field(
        default=VSTAR_DEFAULT_IMAGE_VIEW,
        metadata={
            "choices": VSTAR_IMAGE_VIEWS,
            "help": "V*Bench: the image the options are scored on without evidence (SEAL: unpadded)",
        },
    )
    roi_max_new_tokens: int = 128
    constrained_box: bool = field(
        default=True,
        metadata={
            "help": "cos: the stage-1 box decoded under the box grammar (--no-constrained-box: freely)"
        },
    )
    max_answer_words: int | None = field(
        default=None,
        metadata={"help": "longer predictions are counted as too long (default: the benchmark's)"},
    )
    score_only: bool = field(default=False, metadata={"help": "merge the chunk files there are and score"})
    no_score: bool = field(default=False, metadata={"help": "answer this chunk only (used by --gpus)"})
    answers_file: str | None = field(
        default=None, metadata={"help": "score this answer JSONL instead (implies --score-only)"}
    )
    quiet: bool = field(default=False, metadata={"help": "no progress bar"})
    # Not options: the benchmark, and where the ROI wording came from (resolved from the ROI checkpoint).
    bench: str = field(default="", init=False)
    roi_wording_source: str | None = field(default=None, init=False)

    def __post_init__(self):
        if self.answers_file is not None:
            self.score_only = True

    @property
    def ckpt(self) -> str:
        """LLaVA's `CKPT`: where the answers go (`--ckpt-name`, else named after the checkpoint)."""
        return self.ckpt_name or default_ckpt_name(
            self.mode, self.model_path, self.roi_path, self.switch_path
        )

    @property
    def progress(self) -> bool:
        return not self.quiet

    def to_dict(self) -> dict:
        return {**asdict(self), "ckpt": self.ckpt}


def default_ckpt_name(mode: str, model_path: str, roi_path: str | None, switch_path: str | None) -> str:
    """LLaVA's `CKPT`: the folder name of the checkpoint that makes the difference for this mode."""
    if mode == "cos" and roi_path:
        return Path(roi_path).name + "-cos"
    if mode == "fast" and switch_path:
        return "fast-" + Path(switch_path).name
    return Path(model_path.rstrip("/")).name


def resolve_paths(bench: Benchmark, cfg: RunConfig | argparse.Namespace, ckpt: str) -> BenchPaths:
    data_root = Path(cfg.data_root) if cfg.data_root else DEFAULT_DATA_ROOT
    bench_dir = Path(cfg.bench_dir) if cfg.bench_dir else data_root / bench.folder
    split = cfg.split or bench.split
    question_file = (
        Path(cfg.question_file) if cfg.question_file else bench_dir / bench.question_file.format(split=split)
    )
    image_folder = Path(cfg.image_folder) if cfg.image_folder else bench_dir / bench.image_folder
    answers_dir = bench_dir / "answers" / split / ckpt if split else bench_dir / "answers" / ckpt
    return BenchPaths(
        bench_dir=bench_dir,
        question_file=question_file,
        image_folder=image_folder,
        answers_dir=answers_dir,
        ckpt=ckpt,
        split=split,
        annotations=Path(cfg.annotations) if cfg.annotations else None,
    )


def build_parser() -> HfArgumentParser:
    """The benchmark (positional) and one option per `RunConfig` field."""
    p = HfArgumentParser(
        RunConfig, prog="eval.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("bench", choices=sorted(BENCHMARKS))
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of parsed options, checked, with the ROI wording resolved from the ROI checkpoint."""
    cfg = RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig) if f.init})
    cfg.bench = args.bench
    if cfg.temperature != 0:
        raise SystemExit("only greedy decoding is supported (--temperature 0), as in LLaVA-1.5's evaluation")
    if cfg.mode == "cos" and not cfg.roi_path:
        raise SystemExit("--mode cos needs --roi-path (the ROI adapter)")
    if cfg.mode == "cos" and recorded_region_only(cfg.roi_path):
        raise SystemExit(
            f"--roi-path {cfg.roi_path} was trained on the region turn alone (roi_config.json: region_only): "
            "it proposes regions and has no stage-2 answer; evaluate it inside FaST (--mode fast)"
        )
    if cfg.mode == "fast" and not cfg.switch_path:
        raise SystemExit("--mode fast needs --switch-path (and --roi-path / --seg-path for its evidence)")
    if not 0 <= cfg.chunk_idx < cfg.num_chunks:
        raise SystemExit(f"--chunk-idx {cfg.chunk_idx} outside 0..{cfg.num_chunks - 1}")
    if cfg.roi_path and cfg.mode in ("cos", "fast"):
        try:
            cfg.roi_wording, cfg.roi_wording_source = resolve_roi_wording(cfg.roi_path, cfg.roi_wording)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    return cfg


# --------------------------------------------------------------------------------------------------------------
# Answering
# --------------------------------------------------------------------------------------------------------------


def write_prepared(path: Path, rows: list[dict]) -> None:
    """Atomic and only when changed, so chunk processes started together can all write it."""
    content = "".join(json.dumps(r) + "\n" for r in rows)
    if path.is_file() and path.read_text(encoding="utf-8") == content:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(content, encoding="utf-8")
    tmp.replace(path)


def run_config_path_for(answers_file: Path) -> Path:
    """`<N>_<K>.run_config.json`: the RunConfig a chunk was answered with, next to its answers."""
    return answers_file.with_name(answers_file.stem + ".run_config.json")


def fast_command(cfg: RunConfig, bench: Benchmark, paths: BenchPaths, out: Path) -> list[str]:
    """The composed agent's CLI (`python -m fast`) for this chunk."""
    if bench.likelihood:
        what = ["--vstar", "--bench-folder", str(paths.bench_dir)]
        what += ["--option-image-view", cfg.vstar_image_view]
    else:
        what = ["--question-file", str(paths.prepared), "--image-folder", str(paths.image_folder)]
        what += ["--max-new-tokens", str(cfg.max_new_tokens or bench.max_new_tokens)]
    cmd = [
        *what, "--answers-file", str(out), "--base", cfg.model_path, "--switch", cfg.switch_path,
        "--num-chunks", str(cfg.num_chunks), "--chunk-idx", str(cfg.chunk_idx),
        "--batch-size", str(cfg.batch_size),
    ]  # fmt: skip
    if cfg.device:
        cmd += ["--device", cfg.device]
    cmd += ["--dtype", cfg.dtype, "--bits", str(cfg.bits)]
    for flag, path in (("--roi", cfg.roi_path), ("--seg", cfg.seg_path)):
        if path:
            cmd += [flag, path]
    if cfg.evidence:
        cmd += ["--evidence", cfg.evidence]
    if cfg.roi_path and cfg.roi_wording_source == "requested":  # else the agent reads the same record
        cmd += ["--roi-wording", cfg.roi_wording]
    return [sys.executable, "-m", "fast", *cmd]


def load_model(cfg: RunConfig):
    """The model the mode answers with: the System-1 checkpoint (s1) or the ROI adapter on it (cos)."""
    import torch

    from roillava.answer import load_for_inference
    from roillava.model import inference_dtype

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = inference_dtype(cfg.dtype, device)
    if cfg.mode == "cos":
        return load_for_inference(cfg.roi_path, cfg.model_path, device=device, dtype=dtype, bits=cfg.bits)
    return load_for_inference(cfg.model_path, cfg.model_base, device=device, dtype=dtype, bits=cfg.bits)


def check_run_inputs(cfg: RunConfig, paths: BenchPaths) -> None:
    """The prepared questions (every record) and the checkpoints, checked before any model loads."""
    questions = read_questions(paths.prepared)
    if any(q.get("image") for q in questions) and not paths.image_folder.is_dir():
        raise InputError(
            f"image folder {paths.image_folder} does not exist (--image-folder or the data layout)"
        )
    check_checkpoint(cfg.model_base, "--model-base")
    check_checkpoint(cfg.model_path, "--model-path", check_base=not cfg.model_base)
    for what, path in (
        ("--roi-path", cfg.roi_path),
        ("--switch-path", cfg.switch_path),
        ("--seg-path", cfg.seg_path),
    ):
        check_checkpoint(path, what, check_base=False)


def answer_chunk(cfg: RunConfig, bench: Benchmark, paths: BenchPaths) -> dict:
    """Answer this process's chunk into `<N>_<K>.jsonl`; returns the answerer's counts and timing."""
    out = paths.chunk_file(cfg.num_chunks, cfg.chunk_idx)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_run_inputs(cfg, paths)
    run_config_path_for(out).write_text(json.dumps(cfg.to_dict(), indent=1), encoding="utf-8")
    if cfg.mode == "fast":
        cmd = fast_command(cfg, bench, paths, out)
        start = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO).returncode
        if rc != 0:
            raise SystemExit(f"fast mode failed (exit {rc}): {' '.join(cmd)}")
        return {"seconds": time.perf_counter() - start}
    from roillava.answer import answer_file
    from roillava.roi import DEFAULT_ROI_WORDING, RoiConfig, roi_answer_file

    from .vstar import vstar_answer_file

    model, processor = load_model(cfg)
    max_new = cfg.max_new_tokens or bench.max_new_tokens
    roi_config = RoiConfig(
        wording=cfg.roi_wording or DEFAULT_ROI_WORDING,  # set whenever a ROI adapter is used (cos)
        template=cfg.conv_mode,
        roi_max_new_tokens=cfg.roi_max_new_tokens,
        max_new_tokens=max_new,
        constrained_box=cfg.constrained_box,
    )
    common = {
        "model_signature": model_signature(
            cfg.model_path, cfg.model_base, cfg.roi_path if cfg.mode == "cos" else None
        ),
        "batch_size": cfg.batch_size,
        "model_id": cfg.ckpt,
        "num_chunks": cfg.num_chunks,
        "chunk_idx": cfg.chunk_idx,
        "progress": cfg.progress,
    }
    args = (model, processor, str(paths.prepared), str(paths.image_folder), str(out))
    if bench.likelihood:
        return vstar_answer_file(
            *args, mode=cfg.mode, roi_config=roi_config, template=cfg.conv_mode,
            image_view=cfg.vstar_image_view, **common,
        )  # fmt: skip
    if cfg.mode == "cos":
        return roi_answer_file(*args, config=roi_config, **common)
    return answer_file(*args, template=cfg.conv_mode, max_new_tokens=max_new, **common)


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """`argv` minus the given valued flags (both `--flag v` and `--flag=v`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not any(a.startswith(f + "=") for f in flags):
            out.append(a)
    return out


def run_all_chunks(argv: list[str], gpus: list[str]) -> None:
    """One child process per device, each answering its chunk; returns when all are done."""
    base = _without(argv, ("--gpus", "--num-chunks", "--chunk-idx"))
    children = []
    for k, gpu in enumerate(gpus):
        child_argv = [*base, "--num-chunks", str(len(gpus)), "--chunk-idx", str(k), "--no-score", "--quiet"]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        children.append(subprocess.Popen([sys.executable, "-m", "eval.run", *child_argv], env=env, cwd=REPO))
    failed = [k for k, c in enumerate(children) if c.wait() != 0]
    if failed:
        raise SystemExit(
            f"chunks {failed} failed (devices {[gpus[k] for k in failed]}); rerun to resume them"
        )


# --------------------------------------------------------------------------------------------------------------
# Merging and scoring
# --------------------------------------------------------------------------------------------------------------


def incomplete_chunks(rows: list[dict], paths: BenchPaths, num_chunks: int) -> list[int]:
    return [
        k
        for k in range(num_chunks)
        if not {r["question_id"] for r in chunk(rows, num_chunks, k)}
        <= answered_ids(paths.chunk_file(num_chunks, k))
    ]


def adopt_repeated_ids(source: Path, rows: list[dict], out: Path) -> Path:
    """A LLaVA answer file for a question file that repeats ids (MME), with the prepared unique ids.

    Each answer goes to the question with its id and its prompt, else to the next unanswered question
    with that id; lines that cannot be parsed are kept as they are, to be counted when read.
    """
    by_source: dict = {}
    for q in rows:
        if "source_question_id" in q:
            by_source.setdefault(q["source_question_id"], []).append(q)
    taken: set = set()
    lines = []
    for line in source.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            candidates = [q for q in by_source.get(row["question_id"], []) if q["question_id"] not in taken]
        except (json.JSONDecodeError, KeyError, TypeError):
            lines.append(line + "\n")
            continue
        if candidates:
            match = next((q for q in candidates if q["text"] == row.get("prompt")), candidates[0])
            taken.add(match["question_id"])
            row = {**row, "question_id": match["question_id"]}
        lines.append(json.dumps(row) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines), encoding="utf-8")
    return out


def export_flat_answers(answers: dict, rows: list[dict], path: Path) -> str:
    """`answers/<ckpt>.jsonl` with the benchmark's own ids, the file LLaVA's evaluators read."""
    lines = []
    for q in rows:
        row = answers.get(q["question_id"])
        if row is not None:
            lines.append(json.dumps({**row, "question_id": source_id(q)}) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


def score(cfg: RunConfig, bench: Benchmark, paths: BenchPaths, rows: list[dict], notes: dict) -> dict:
    """Merge (when every chunk is complete, or with --score-only), check and score; writes metrics.json."""
    if cfg.answers_file:
        source = Path(cfg.answers_file)
        if not source.is_file():
            raise SystemExit(f"answers file not found: {source}")
        if any("source_question_id" in r for r in rows):
            source = adopt_repeated_ids(source, rows, paths.answers_dir / "external_answers.jsonl")
    else:
        missing_chunks = incomplete_chunks(rows, paths, cfg.num_chunks)
        if missing_chunks and not cfg.score_only:
            return {"status": "waiting", "incomplete_chunks": missing_chunks}
        merge_files([paths.chunk_file(cfg.num_chunks, k) for k in range(cfg.num_chunks)], paths.merged)
        source = paths.merged
    max_words = cfg.max_answer_words if cfg.max_answer_words is not None else bench.max_answer_words
    answers, check = read_answers(source, [r["question_id"] for r in rows], max_answer_words=max_words)
    files = {}
    if bench.flat_answers:
        files["llava_answers"] = export_flat_answers(
            answers, rows, paths.answers_dir.parent / f"{paths.ckpt}.jsonl"
        )
    metrics = bench.score(ScoreInput(bench, paths, rows, answers, check))
    metrics.setdefault("files", {}).update(files)
    summary = {
        "status": "scored",
        "benchmark": bench.name,
        "title": bench.title,
        "mode": cfg.mode,
        "ckpt": cfg.ckpt,
        "split": paths.split,
        "answers_file": str(source),
        "prepare": notes,
        "answer_check": check.to_dict(),
        "metrics": metrics,
        "config": cfg.to_dict(),
    }
    paths.metrics.parent.mkdir(parents=True, exist_ok=True)
    paths.metrics.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def report(summary: dict, paths: BenchPaths) -> str:
    """A few human lines; the full record is metrics.json."""
    if summary["status"] != "scored":
        return (
            f"chunk answered; waiting for chunks {summary['incomplete_chunks']} "
            f"(rerun with --score-only to score what exists)"
        )
    m, c = summary["metrics"], summary["answer_check"]
    lines = [f"== {summary['title']} | mode {summary['mode']} | {summary['ckpt']}"]
    if m.get("score") is None:
        lines.append(f"score: none ({m.get('reason', 'no ground truth')})")
    else:
        lines.append(f"score: {m['score']:.2f}  {m.get('metric', '')}")
    problems = {
        k: c[k]
        for k in ("missing", "duplicates", "unknown_ids", "unreadable_lines", "empty", "too_long", "errors")
        if c[k]
    }
    lines.append(
        f"answers: {c['answered']}/{c['questions']} answered; "
        + (
            "no problems"
            if not problems
            else "problems: " + ", ".join(f"{k} {v}" for k, v in problems.items())
        )
    )
    if c["answered"] == 0:
        lines.append("WARNING: no question has an answer; the score is of empty predictions")
    if m.get("warning"):
        lines.append(f"WARNING: {m['warning']}")
    for name, path in m.get("files", {}).items():
        lines.append(f"{name}: {path}")
    lines.append(f"metrics: {paths.metrics}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = config_from_args(build_parser().parse_args(argv))
    bench = BENCHMARKS[cfg.bench]
    gpus = [g.strip() for g in cfg.gpus.split(",") if g.strip()] if cfg.gpus else []
    if gpus and (cfg.num_chunks != 1 or cfg.chunk_idx != 0):
        raise SystemExit("--gpus sets the chunks itself; drop --num-chunks/--chunk-idx")
    if gpus:
        cfg.num_chunks = len(gpus)
    paths = resolve_paths(bench, cfg, cfg.ckpt)
    prepared = bench.prepare(bench, paths)
    write_prepared(paths.prepared, prepared.rows)
    notes = {"question_file": str(paths.question_file), "questions": len(prepared.rows), **prepared.notes}
    if not cfg.score_only:
        if gpus:
            run_all_chunks(argv, gpus)
        else:
            try:
                timing = answer_chunk(cfg, bench, paths)
            except (InputError, QuestionFileError, AnswersBusy) as e:
                raise fail(e) from None
            notes[f"answering_chunk_{cfg.chunk_idx}"] = timing
    if cfg.no_score:
        return {"status": "answered"}
    summary = score(cfg, bench, paths, prepared.rows, notes)
    print(report(summary, paths), flush=True)
    return summary


if __name__ == "__main__":
    main()
