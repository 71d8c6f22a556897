"""The demo's agent stages on tiny checkpoints and the tiny toy world: results keys, report, overlays."""

from __future__ import annotations

import json

import pytest
from test_fast_agent import _one_thread, fast_checkpoints  # noqa: F401

import playground.demo as demo
from playground.toyworld.scene import LARGE_SIDE, SMALL_SIDE


@pytest.fixture()
def demo_paths(tiny_base, toy_world, tmp_path, monkeypatch):
    ckpts = fast_checkpoints(tiny_base)
    monkeypatch.setattr(demo, "CKPT", ckpts["base"].parent)  # holds system1/, switch/, roi/, seg/
    monkeypatch.setattr(demo, "DEMO", tmp_path)
    monkeypatch.setattr(demo, "AGENT_DIR", tmp_path / "agent")
    monkeypatch.setattr(demo, "VSTAR_TOY", toy_world["playground"] / "data" / "eval" / "vstar_toy")
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
    assert set(demo.agent_results(result)) == {"system1", "system2_always", "fast", "memory"}
    assert "| FaST |" in demo.agent_table(result) and len(demo.agent_acceptance(result)) == 4

    # the report shows System-2 traces: make the fast run's traces System 2 by using system2_always's
    agent_dir = demo_paths / "agent"
    (agent_dir / "fast.traces.jsonl").write_text((agent_dir / "system2_always.traces.jsonl").read_text())
    out = demo.stage_agent_report()
    report = (demo_paths / "report.md").read_text()
    assert out["overlays"] == min(demo.REPORT_OVERLAYS, n) and report.count("![") == out["overlays"]
    assert "## Acceptance" in report and "## Evidence ablation" in report and "| System 2 always |" in report
    assert len(list((demo_paths / "report").glob("*.png"))) == out["overlays"]
