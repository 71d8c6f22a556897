"""`make demo-seeds`: the demo on several seeds of world and training, and one table of their acceptance numbers.

A recipe that passes on one seed only does not pass: each seed runs `python -m playground.demo --seed N`
in turn (finished stages are skipped, as in the demo), then the table reads every seed's `results.json`:
one row per figure, one column per seed, then the mean and the minimum across seeds. A figure a
`results.json` does not hold reads "n/a", so older runs and newer keys share one table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from playground.demo import PLAYGROUND, DemoPaths

TABLE_DIR = PLAYGROUND / "demo-seeds"


@dataclass(frozen=True)
class Figure:
    """One row of the table: a value read from `results.json` by its key path."""

    label: str
    path: tuple[str, ...]
    digits: int = 3


# The fixed rows; the switch's F1 and names-exact rows are every such key its results hold (with and
# without the short-answer suffix, however the demo names them), see `switch_figures`.
FIGURES = [
    Figure("System 1 acc_all", ("system1", "acc_all")),
    Figure("System 1 acc_hard", ("system1", "acc_hard")),
    Figure("System 1 s/question", ("system1", "sec_per_question"), 4),
    Figure("System 2 always acc_all", ("system2_always", "acc_all")),
    Figure("System 2 always acc_hard", ("system2_always", "acc_hard")),
    Figure("System 2 always s/question", ("system2_always", "sec_per_question"), 4),
    Figure("FaST acc_all", ("fast", "acc_all")),
    Figure("FaST acc_hard", ("fast", "acc_hard")),
    Figure("FaST s/question", ("fast", "sec_per_question"), 4),
    Figure("FaST System-2 rate", ("fast", "system2_rate")),
    Figure("FaST confidence threshold", ("fast", "confidence_threshold")),
    # V*Bench's own report: attribute and spatial (left/right) questions apart
    *(
        Figure(f"{label} acc {category}", (key, "acc_by_category", category))
        for key, label in (("system1", "System 1"), ("system2_always", "System 2 always"), ("fast", "FaST"))
        for category in ("direct_attributes", "relative_position")
    ),
    Figure("ROI covered (hard)", ("roi", "target_covered_rate_hard")),
    Figure("ROI fallback rate", ("roi", "fallback_rate")),
    Figure("ROI train s", ("timings", "roi_train"), 0),
    Figure("ROI eval s", ("timings", "roi_eval"), 0),
]
SWITCH_KEYS = ("f1_system2", "object_names_exact")


def lookup(results: dict, path: tuple[str, ...]) -> float | None:
    """The number at `path`, or None where any key is missing or the value is not a number."""
    value: object = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _key_paths(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in tree.items():
        paths += _key_paths(value, (*prefix, key)) if isinstance(value, dict) else [(*prefix, key)]
    return paths


def switch_figures(all_results: list[dict]) -> list[Figure]:
    """A row for each switch F1 / names-exact key any seed holds (`switch.f1_system2`, a suffix
    variant such as `switch.no_suffix.f1_system2` or `switch.f1_system2_no_suffix`), in first-seen order."""
    seen: dict[tuple[str, ...], None] = {}
    for results in all_results:
        switch = results.get("switch")
        for path in _key_paths(switch) if isinstance(switch, dict) else []:
            if any(path[-1].startswith(k) for k in SWITCH_KEYS):
                seen.setdefault(("switch", *path), None)
    if any("phrasings" in path for path in seen):  # the top-level keys repeat the "short" phrasing's
        seen = {path: None for path in seen if "phrasings" in path}
    if not seen:  # no seed has switch results yet: the rows still show, as n/a
        seen = {("switch", k): None for k in SWITCH_KEYS}
    labels = {"f1_system2": "switch F1", "object_names_exact": "switch names exact"}
    figures = []
    for path in seen:
        name = path[-1]
        base = next(k for k in SWITCH_KEYS if name.startswith(k))
        variant = " ".join([*path[1:-1], name[len(base) :].strip("_")]).strip()
        figures.append(Figure(f"{labels[base]}{f' ({variant})' if variant else ''}", path))
    return figures


@dataclass(frozen=True)
class Check:
    """One acceptance check: `test` gets the figures it needs (None if any is missing: n/a)."""

    label: str
    test: Callable[[dict], bool | None]


def _need(results: dict, *paths: tuple[str, ...]) -> list[float] | None:
    values = [lookup(results, p) for p in paths]
    return None if any(v is None for v in values) else values


def _check(paths: tuple[tuple[str, ...], ...], rule: Callable[..., bool]) -> Callable[[dict], bool | None]:
    def test(results: dict) -> bool | None:
        values = _need(results, *paths)
        return None if values is None else bool(rule(*values))

    return test


CHECKS = [
    Check(
        "FaST acc_all >= System-2-always acc_all",
        _check((("fast", "acc_all"), ("system2_always", "acc_all")), lambda f, s2: f >= s2),
    ),
    Check(
        "FaST hard >= System-1 hard + 0.20",
        _check((("fast", "acc_hard"), ("system1", "acc_hard")), lambda f, s1: f >= s1 + 0.20),
    ),
    Check(
        "FaST s/question <= 0.6 x System-2-always",
        _check(
            (("fast", "sec_per_question"), ("system2_always", "sec_per_question")),
            lambda f, s2: f <= 0.6 * s2,
        ),
    ),
    Check("ROI covered (hard) >= 0.85", _check((("roi", "target_covered_rate_hard"),), lambda c: c >= 0.85)),
    Check("ROI fallback rate <= 0.02", _check((("roi", "fallback_rate"),), lambda r: r <= 0.02)),
    Check(
        "ROI stage (train + eval) <= 180 s",
        _check((("timings", "roi_train"), ("timings", "roi_eval")), lambda t, e: t + e <= 180),
    ),
]


def switch_checks(figures: list[Figure]) -> list[Check]:
    """Switch F1 and names exact >= 0.95: every variant the results hold must pass."""
    return [
        Check(f"{f.label} >= 0.95", _check((f.path,), lambda v: v >= 0.95))
        for f in figures
        if f.path[-1].startswith(SWITCH_KEYS)
    ]


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def seed_table(results_by_seed: dict[int, dict]) -> str:
    """The markdown table: a row per figure and per acceptance check, a column per seed, mean and min."""
    seeds = sorted(results_by_seed)
    all_results = [results_by_seed[s] for s in seeds]
    sw = switch_figures(all_results)
    figures = FIGURES + sw
    header = ["", *[f"seed {s}" for s in seeds], "mean", "min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for f in figures:
        values = [lookup(r, f.path) for r in all_results]
        known = [v for v in values if v is not None]
        mean = sum(known) / len(known) if known else None
        low = min(known) if known else None
        cells = [_number(v, f.digits) for v in values] + [_number(mean, f.digits), _number(low, f.digits)]
        lines.append(f"| {f.label} | " + " | ".join(cells) + " |")
    lines.append("| **acceptance** |" + " |" * (len(header) - 1))
    for check in CHECKS + switch_checks(sw):
        marks = [check.test(r) for r in all_results]
        # "all seeds": passes only if every seed was measured and passed
        every = None if None in marks else all(marks)
        cells = [_mark(m) for m in marks] + [f"all: {_mark(every)}", ""]
        lines.append(f"| {check.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def demo_results_path(seed: int) -> Path:
    return DemoPaths.for_seed(seed).results


def read_results(
    seeds: list[int], results_path: Callable[[int], Path] = demo_results_path
) -> dict[int, dict]:
    """Each seed's `results.json` ({} where the seed has none yet)."""
    out = {}
    for seed in seeds:
        path = results_path(seed)
        out[seed] = json.loads(path.read_text()) if path.is_file() else {}
    return out


def run_demo(seed: int, adapters: str | None) -> None:
    """`python -m playground.demo --seed N`, with this interpreter's scripts (deepspeed) on PATH."""
    cmd = [sys.executable, "-m", "playground.demo", "--seed", str(seed)]
    cmd += ["--adapters", adapters] if adapters else []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    print(f"[demo-seeds] seed {seed}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=PLAYGROUND.parent, env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--no-run", action="store_true", help="only tabulate the seeds' existing results")
    parser.add_argument("--adapters", default=None, help="passed to the demo (default: all stages)")
    parser.add_argument("--out", type=Path, default=TABLE_DIR / "table.md", help="where the table is written")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not args.no_run:
        for seed in seeds:
            run_demo(seed, args.adapters)
    table = seed_table(read_results(seeds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# The toy demo on seeds {', '.join(map(str, seeds))}\n\n{table}\n")
    print(f"\n{table}\n\nwritten: {args.out}")


if __name__ == "__main__":
    main()
