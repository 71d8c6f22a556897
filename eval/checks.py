"""Input checks that run before any model loads: seconds, bounded memory, one line naming the file.

Torch-free (it reads JSON and safetensors headers only), so every entry point calls it first:

    check_checkpoint(path, "--model-path")   # a local checkpoint (any of ours) or a hub id
    check_file(path, "--data_path")          # an existing, non-empty file
    check_dir(path, "--image_folder")        # an existing directory

Each raises `InputError` with one actionable line. `fail(e)` turns one into a one-line exit.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from urllib.parse import urlparse

# A safetensors header is a few MB even for a 70B shard; anything above this is a damaged file.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024

# Config files that mark a directory as a checkpoint of ours, and what writes each.
CONFIG_FILES = {
    "config.json": "save_pretrained (the training run's final save)",
    "adapter_config.json": "peft's save_pretrained (LoRA checkpoints)",
    "swillava_config.json": "SwiLLaVA's save_pretrained",
    "segllava_config.json": "SegLLaVA's save_pretrained",
}
WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Any of these is a tokenizer (LLaMA ships tokenizer.json and/or tokenizer.model; BPE models vocab.json).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


class InputError(ValueError):
    """A bad input found before loading: the message is one line naming the file and the fix."""


def fail(error: BaseException) -> SystemExit:
    """`raise fail(e)`: exit with `error: <one line>` and status 2 (no traceback)."""
    import sys

    print(f"error: {error}", file=sys.stderr, flush=True)
    return SystemExit(2)


def check_file(path: str | Path, what: str, *, hint: str = "") -> Path:
    p = Path(path)
    if "PATH/" in str(path) or str(path).startswith("PATH"):
        raise InputError(
            f"{what} is still the placeholder {str(path)!r}: replace PATH with the real location"
        )
    if not p.exists():
        raise InputError(f"{what}: {p} does not exist{'; ' + hint if hint else ''}")
    if not p.is_file():
        raise InputError(f"{what}: {p} is not a file")
    if p.stat().st_size == 0:
        raise InputError(f"{what}: {p} is empty")
    return p


def check_dir(path: str | Path, what: str, *, hint: str = "") -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what}: {p} does not exist{'; ' + hint if hint else ''}")
    if not p.is_dir():
        raise InputError(f"{what}: {p} is not a directory")
    return p


def check_safetensors(path: str | Path) -> None:
    """The header of a safetensors file is readable and every tensor lies inside the file."""
    p = Path(path)
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{p}: truncated safetensors file ({size} bytes); write it again")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise InputError(
                f"{p}: not a valid safetensors file (header length {n} for a {size}-byte file: "
                "truncated or not safetensors); write it again"
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{p}: damaged safetensors header (not JSON); write it again") from None
    if not isinstance(header, dict):
        raise InputError(f"{p}: damaged safetensors header; write it again")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end = (info.get("data_offsets") or [0, 0])[1] if isinstance(info, dict) else None
        if not isinstance(end, int) or end > data:
            raise InputError(
                f"{p}: truncated: tensor {name!r} ends at byte {end} of the data but the file holds {data}; "
                "copy or write it again"
            )


def _read_json(path: Path, writer: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: damaged JSON ({e}); it is written by {writer}") from None


def looks_like_hub_id(source: str) -> bool:
    parts = str(source).split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not str(source).startswith((".", "~"))
        and not any(c in str(source) for c in " \\:")
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a connection within `timeout` seconds (name lookup included: it
    runs in a thread, since a lookup without network can hang far longer than a connect)."""
    import threading

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def check_hub_id(repo_id: str, what: str) -> None:
    """A hub id is fine if it is in the local cache or the hub is reachable; otherwise fail at once
    (instead of minutes of retries) telling how to use a local directory."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings it
        return
    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed id: let the loader say so
        cached = None
    if isinstance(cached, str):
        return
    how = f"download it where there is a network (`hf download {repo_id} --local-dir DIR`) and pass DIR as {what}"
    if constants.HF_HUB_OFFLINE:
        raise InputError(
            f"{what} {repo_id!r} is a hub id, not in the local cache, and HF_HUB_OFFLINE is set: {how}"
        )
    if not _hub_reachable():
        raise InputError(
            f"{what} {repo_id!r} is a hub id, not in the local cache, and the hub is unreachable: {how}"
        )


def check_checkpoint(
    source: str | Path | None, what: str, *, needs_tokenizer: bool = False, check_base: bool = True
) -> None:
    """A local checkpoint of ours (or a hub id) is complete enough to load; raises `InputError` if not.

    Checks, in seconds and without reading weights: the directory exists; it holds a config we know
    (`config.json`, `adapter_config.json`, `swillava_config.json` or `segllava_config.json`) that
    parses; weights are there (every shard of an index); every safetensors header is valid and its
    tensors lie inside the file; a tokenizer config comes with its tokenizer; a LoRA adapter's base is
    checked too.
    """
    if source is None or str(source) == "":
        return
    p = Path(source).expanduser()
    if not p.exists():
        if "PATH/" in str(source) or str(source).startswith("PATH"):
            raise InputError(
                f"{what} is still the placeholder {str(source)!r}: replace PATH with the real location"
            )
        if looks_like_hub_id(str(source)):
            check_hub_id(str(source), what)
            return
        raise InputError(f"{what}: {p} does not exist (neither a directory nor a hub id like org/name)")
    if p.is_file():
        if p.suffix == ".safetensors":
            check_safetensors(p)
        elif p.stat().st_size == 0:
            raise InputError(f"{what}: {p} is empty")
        return
    present = {name: p / name for name in CONFIG_FILES if (p / name).is_file()}
    if not present:
        raise InputError(
            f"{what}: {p} holds no config.json (nor adapter_config.json, swillava_config.json, segllava_config.json);"
            " it is not a finished checkpoint: point at the folder the training run's final save wrote"
        )
    configs = {name: _read_json(path, CONFIG_FILES[name]) for name, path in present.items()}
    for st in sorted(p.glob("*.safetensors")) + sorted(p.glob("sam/*.safetensors")):
        check_safetensors(st)
    index = p / "model.safetensors.index.json"
    if index.is_file():
        shards = set(_read_json(index, "save_pretrained").get("weight_map", {}).values())
        for shard in sorted(shards):
            if not (p / shard).is_file():
                raise InputError(f"{p}: shard {shard} named by model.safetensors.index.json is missing")
    if "adapter_config.json" in present and not any(
        (p / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")
    ):
        raise InputError(
            f"{p}: adapter_config.json but no adapter_model.safetensors (written by peft's save_pretrained)"
        )
    only_llava = "config.json" in present and not (
        {"swillava_config.json", "segllava_config.json"} & set(present)
    )
    if (
        only_llava
        and "adapter_config.json" not in present
        and not any((p / n).is_file() for n in WEIGHT_NAMES)
    ):
        raise InputError(
            f"{p}: config.json but no weights (model.safetensors or model.safetensors.index.json); "
            "they are written by save_pretrained at the end of training"
        )
    if ((p / "tokenizer_config.json").is_file() or needs_tokenizer) and not any(
        (p / n).is_file() for n in TOKENIZER_FILES
    ):
        raise InputError(
            f"{p}: no tokenizer.json (nor tokenizer.model); it is written by processor.save_pretrained "
            "(copy it from the base model)"
        )
    adapter = configs.get("adapter_config.json")
    if check_base and adapter and adapter.get("base_model_name_or_path"):
        base = adapter["base_model_name_or_path"]
        if not Path(base).is_absolute() and (p / base).exists():
            base = str(p / base)
        check_checkpoint(base, f"{p}/adapter_config.json base_model_name_or_path")


# --- training entry points ------------------------------------------------------------------------------
BF16_NOTICE = (
    "notice: this machine cannot train in bf16 (no CUDA GPU with bf16 support): training in fp32 instead "
    "(BF16=False for the scripts; on a CPU, --use_cpu True keeps bf16)"
)


def bf16_usable(use_cpu: bool = False) -> bool:
    """bf16 training works here: a CUDA GPU that supports it, or the CPU asked for explicitly."""
    import torch

    return use_cpu or (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def parse_training_args(parser, argv: list[str] | None):
    """`HfArgumentParser.parse_args_into_dataclasses`, falling back to fp32 with a notice where transformers
    refuses bf16 ("Your setup doesn't support bf16/gpu")."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as e:
        if "bf16" not in str(e):
            raise
    print(BF16_NOTICE, file=sys.stderr, flush=True)
    return parser.parse_args_into_dataclasses(args=[*argv, "--bf16", "False"])


def scan_records(n: int, check_one, *, what: str, quoted: int = 10, progress: bool = True) -> dict:
    """Run `check_one(i)` on every record; count the failures and quote the first `quoted` (their
    messages name file and record). Used by `--dry_run`, which loads no model weights."""
    from tqdm import tqdm

    bad, first = 0, []
    for i in tqdm(range(n), desc=f"checking {what}", unit="rec", disable=not progress):
        try:
            check_one(i)
        except (ValueError, OSError, KeyError, IndexError, TypeError) as e:
            bad += 1
            if len(first) < quoted:
                first.append(str(e))
    return {"records": n, "bad_records": bad, "first_bad": first}


def check_record_images(
    records: list, image_folder: str | Path, data_path: str | Path, *, quoted: int = 5, strict: bool = True
) -> int:
    """Every record is an object with `conversations`, and every image it names exists: a cheap pass over
    the whole file at the start of training (a bad record would otherwise surface only when sampled)."""
    folder = Path(image_folder)
    problems, n_bad = [], 0
    for i, rec in enumerate(records):
        problem = None
        if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
            problem = "no 'conversations' list"
        else:
            images = rec.get("image")
            for name in images if isinstance(images, list) else [images] if images else []:
                if not isinstance(name, str) or not (folder / name).is_file():
                    problem = f"image {name!r} not found under {folder}"
                    break
        if problem:
            n_bad += 1
            if len(problems) < quoted:
                problems.append(f"record {i}: {problem}")
    if n_bad:
        listed = f"{'; '.join(problems)}{'; …' if n_bad > quoted else ''}"
        if strict:
            raise InputError(
                f"{data_path}: {n_bad} of {len(records)} records are bad ({listed}); fix them, "
                "or pass --skip_bad_records True to train without them"
            )
        print(
            f"notice: {data_path}: {n_bad} of {len(records)} records are bad and will be skipped ({listed})"
        )
    return n_bad


# --- paths inside checkpoints ---------------------------------------------------------------------------
def relative_to_checkpoint(directory: str | Path, path: str) -> str:
    """How a checkpoint config records a local path: relative to the checkpoint directory, so the
    checkpoint and what it names can move together. Hub ids, relative paths (already relative to the
    checkpoint) and empty values stay as they are."""
    if not path or not os.path.isabs(path) or not Path(path).exists():
        return path
    return os.path.relpath(Path(path).resolve(), Path(directory).resolve())


def resolve_in_checkpoint(directory: str | Path, path: str, what: str) -> str:
    """A path a checkpoint config names, resolved against the checkpoint directory; a missing local path
    is an error naming the config, the field and where it was looked for (a hub id stays as it is)."""
    if not path:
        return path
    candidate = Path(path) if os.path.isabs(path) else Path(directory) / path
    if candidate.exists():
        return str(candidate)
    if not os.path.isabs(path) and looks_like_hub_id(path):
        return path
    raise InputError(
        f"{Path(directory) / what.split(':')[0]} names {what.split(':')[-1]} {path!r}, which does not exist "
        f"(looked for {candidate}): was the checkpoint moved without it? Move it back beside the checkpoint, "
        "or pass its new location (e.g. --sam, --model-base)"
    )


def read_utf8(path: str | Path) -> str:
    """A text file's contents; bytes that are not UTF-8 raise naming the file and line (not a bare
    UnicodeDecodeError)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 (byte {raw[e.start]:#x} at offset {e.start}); re-save the file as UTF-8"
        ) from None


def load_json_records(path: str | Path) -> list[dict]:
    """A LLaVA JSON list (or JSONL) file; a parse error names the file (and line for JSONL)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    text = read_utf8(path)
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON line: {e}") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


RUN_DATA_RECORD = "run_data.json"


def data_digest(path: str | Path) -> str:
    """sha1 of a data file, or of a data folder's JSON files (names and contents; images are not read)."""
    import hashlib

    from .qa_files import file_digest

    p = Path(path)
    if not p.is_dir():
        return file_digest(p)
    h = hashlib.sha1()
    for f in sorted(p.glob("*.json*")):
        h.update(f"{f.name} {file_digest(f)}\n".encode())
    return h.hexdigest()


def resume_checkpoint(
    output_dir: str | Path,
    *,
    files: dict[str, str | None],
    settings: dict | None = None,
    checkpoint: str | None = None,
    auto: bool = True,
) -> str | None:
    """The checkpoint a training run resumes from (`checkpoint`, else with `auto` the last `checkpoint-*`
    in `output_dir`), once it is known to come from the same data; then this run's data record is written
    for the next resume. Only rank 0 reads the data files, once per launch, not once per GPU.

    A checkpoint of other data would continue, or if finished silently stand for, a run on the new data:
    that stops here, naming what changed. `files` are the data files by role, compared by content (a
    moved file with the same bytes resumes; a folder by its JSON files); `settings` are the data choices
    that are not files. An output folder written before these records resumes as before.
    """
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(output_dir)
    if checkpoint is None and auto and out.is_dir():
        checkpoint = get_last_checkpoint(str(out))
    if int(os.environ.get("RANK", "0")) != 0:
        return checkpoint  # rank 0 reads the data (a refusal there ends the whole launch); the rest do not
    record = {
        "files": {role: {"path": str(p), "sha1": data_digest(p)} for role, p in files.items() if p},
        "settings": settings or {},
    }
    previous = out / RUN_DATA_RECORD
    if checkpoint and previous.is_file():
        old = json.loads(previous.read_text())
        changed = [
            f"{role} ({new['path']})"
            for role, new in record["files"].items()
            if old["files"].get(role, {}).get("sha1") != new["sha1"]
        ]
        changed += [f"{role} (no longer given)" for role in old["files"] if role not in record["files"]]
        changed += [
            f"{key} ({old['settings'].get(key)!r} → {value!r})"
            for key, value in record["settings"].items()
            if old["settings"].get(key) != value
        ]
        if changed:
            raise InputError(
                f"{checkpoint} was trained on other data: {', '.join(changed)} changed since; delete "
                f"{out} or train into another output folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    tmp = previous.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(previous)
    return checkpoint
