"""The demo's agent stages on tiny checkpoints and the tiny toy world: results keys, report, overlays."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from PIL import Image
from test_fast_agent import _one_thread, fast_checkpoints  # noqa: F401

import playground.demo as demo
from playground.toyworld.scene import LARGE_SIDE, SMALL_SIDE


@pytest.fixture()
def demo_paths(tiny_base, toy_world, tmp_path, monkeypatch):
    ckpts = fast_checkpoints(tiny_base)
    (tmp_path / "checkpoints").symlink_to(ckpts["base"].parent)  # holds system1/, switch/, roi/, seg/
    paths = demo.DemoPaths(0, toy_world["playground"], toy_world["dataset"], tmp_path)
    monkeypatch.setattr(demo, "PATHS", paths)
    monkeypatch.setattr(demo, "CURVE_THRESHOLDS", (0.5,))
    knobs = {"switch_max_new_tokens": 4, "roi_max_new_tokens": 6, "answer_max_new_tokens": 3, "batch_size": 4}
    monkeypatch.setattr(demo, "AGENT_KNOBS", knobs)
    return tmp_path


def test_agent_stages_write_results_and_report(demo_paths, toy_world):
    result = demo.stage_agent_eval()
    n = toy_world["size"].vstar
    for key in ("system1", "system2_always", "fast"):
        assert set(result[key]) >= {"acc_easy", "acc_hard", "acc_all", "sec_per_question"}
        assert 0 <= result[key]["acc_all"] <= 1 and result[key]["sec_per_question"] > 0
    assert 0 <= result["fast"]["system2_rate"] <= 1
    assert (
        result["runs"]["system2_always"]["system2_rate"] == 1.0
        and result["runs"]["system1"]["system2_rate"] == 0
    )
    assert set(result["evidence_ablation"]) == {"roi", "seg", "roi+seg"}
    assert result["memory"]["agent_params"] > result["memory"]["llava_plus_sam_params"] > 0
    runs = result["runs"]["fast"]
    assert runs["n_easy"] + runs["n_hard"] == n
    # hard iff the target is small, as the toy world draws it
    answers = [json.loads(line) for line in (demo_paths / "agent" / "fast.jsonl").read_text().splitlines()]
    sizes = [max(a["metadata"]["bbox"][0][2:]) for a in answers]
    assert sum(demo.vstar_toy_is_hard(a["metadata"]["bbox"][0]) for a in answers) == runs["n_hard"]
    small, large = SMALL_SIDE[1] + 2, 0.9 * LARGE_SIDE[0]  # rasterised shapes: a pixel or so either way
    assert all(s <= small or s >= large for s in sizes)
    assert all((s <= small) == demo.vstar_toy_is_hard([0, 0, s, s]) for s in sizes)
    # V*Bench's per-category accuracy, counted from the same answers
    by_category: dict[str, list[bool]] = {}
    for a in answers:
        by_category.setdefault(a["metadata"]["category"], []).append(bool(a["metadata"]["correct"]))
    assert result["fast"]["acc_by_category"] == {k: sum(v) / len(v) for k, v in sorted(by_category.items())}
    assert sum(runs["n_by_category"].values()) == n
    assert set(demo.agent_results(result)) == {
        "system1", "system2_always", "fast", "fast_no_confidence", "calibration", "curve", "memory",
    }  # fmt: skip
    assert "| FaST (threshold" in demo.agent_table(result) and len(demo.agent_acceptance(result)) == 4
    # the threshold was calibrated on the held-out split (3 questions), and the curve ran the agent at
    # 0, that threshold and each extra one
    calibration = json.loads((demo_paths / "agent" / "calibration" / "calibration.json").read_text())
    assert (
        calibration["n"] == toy_world["size"].vstar_calib
        and calibration["threshold"] == result["fast"]["confidence_threshold"]
    )
    assert calibration["threshold"] in [p["threshold"] for p in calibration["sweep"]]
    assert [p["threshold"] for p in result["curve"]] == sorted([0.0, 0.5, calibration["threshold"]])
    assert result["curve"][0]["acc_all"] == result["fast_no_confidence"]["acc_all"]
    no_routing = result["runs"]["fast_no_confidence"]
    assert result["agent_config"]["confidence_threshold"] == calibration["threshold"]
    # routing applies to the groups (numbers of options) System 2 improved on the held-out split
    gains = calibration["system2_gains"]
    assert calibration["option_counts"] == [int(g) for g, gain in gains.items() if gain > 0]
    assert result["agent_config"]["confidence_option_counts"] == calibration["option_counts"]
    assert result["fast"]["confidence_option_counts"] == calibration["option_counts"]
    assert set(gains) <= {"2", "4"}  # the toy V* set: left/right (2 options) and patterns (4)
    assert sum(no_routing["routes"].values()) == round(no_routing["system2_rate"] * n)

    # the report shows System-2 traces: make the fast run's traces System 2 by using system2_always's
    agent_dir = demo_paths / "agent"
    (agent_dir / "fast.traces.jsonl").write_text((agent_dir / "system2_always.traces.jsonl").read_text())
    out = demo.stage_agent_report()
    report = (demo_paths / "report.md").read_text()
    assert out["overlays"] == min(demo.REPORT_OVERLAYS, n) and report.count("![") == out["overlays"] + 1
    assert "## Acceptance" in report and "## Evidence ablation" in report and "| System 2 always |" in report
    assert "## Confidence routing" in report and "accuracy_cost.png" in report
    assert len(list((demo_paths / "report").glob("*.png"))) == out["overlays"] + 1
    with Image.open(demo_paths / "report" / "accuracy_cost.png") as plot:
        assert plot.size == (720, 480) and len(plot.getcolors(1 << 16)) > 5


def test_demo_acceptance_reads_every_target():
    results = {
        "system1": {"acc_hard": 0.3},
        "system2_always": {"acc_all": 0.9, "sec_per_question": 0.1},
        "fast": {"acc_all": 0.91, "acc_hard": 0.95, "sec_per_question": 0.05},
        "memory": {"agent_params": 105, "llava_plus_sam_params": 100},
        "roi": {"target_covered_rate_hard": 0.9, "fallback_rate": 0.03},
        "switch": {"phrasings": {
            "short": {"f1_system2": 0.99, "object_names_exact": 0.96},
            "bare": {"f1_system2": 0.97, "object_names_exact": 0.9},
        }},
        "timings": {"roi_train": 150.0, "roi_eval": 20.0},
    }  # fmt: skip
    checks = demo.demo_acceptance(results)
    failed = sorted(name for name, ok in checks.items() if not ok)
    assert failed == ["ROI fallback rate <= 0.02", "switch names exact >= 0.95 (bare)"]
    assert len(checks) == 4 + 3 + 4
    results["fast"]["acc_all"] = 0.89
    assert not demo.demo_acceptance(results)["fast acc >= System-2-always acc"]
    assert demo.demo_acceptance({}) == {}


def test_seed_zero_keeps_the_known_layout_and_other_seeds_one_folder_each():
    zero, seven = demo.DemoPaths.for_seed(0), demo.DemoPaths.for_seed(7)
    root = demo.ROOT
    assert (zero.demo, zero.toy, zero.dataset) == (
        root / "playground" / "demo",
        root / "playground" / "data" / "toy",
        root / "dataset",
    )
    assert (zero.ckpt, zero.demo, zero.vstar_toy) == (demo.CKPT, demo.DEMO, demo.VSTAR_TOY)
    assert zero.training_seed == 42  # the scripts' default: seed 0 trains as before
    home = root / "playground" / "demo-seed7"
    for path in (
        seven.demo,
        seven.toy,
        seven.eval_toy,
        seven.vstar_toy,
        seven.dataset,
        seven.ckpt,
        seven.results,
    ):
        assert path.is_relative_to(home), path
    assert seven.training_seed != zero.training_seed
    # the generated folder is ignored and cleaned like the seed-0 outputs
    assert "playground/demo-seed*/" in (root / ".gitignore").read_text().splitlines()
    assert "playground/demo-seed*" in (root / "Makefile").read_text()


def test_stages_read_the_run_paths_not_the_seed_zero_constants():
    """A stage that used `CKPT`, `DEMO`, … would write seed 0's folders on every seed."""
    seed_zero_names = {"DEMO", "TOY", "EVAL_TOY", "BASE", "CKPT", "VSTAR_TOY", "AGENT_DIR"}
    tree = ast.parse(Path(demo.__file__).read_text())
    used = [
        f"{fn.name}: {node.id}"
        for fn in tree.body
        if isinstance(fn, ast.FunctionDef)
        for node in ast.walk(fn)
        if isinstance(node, ast.Name) and node.id in seed_zero_names
    ]
    assert not used, used
