"""The seed table from synthetic `results.json` files: figures, n/a for missing keys, mean/min, checks."""

from __future__ import annotations

import json

from playground.demo_seeds import read_results, seed_table

PASSING = {
    "system1": {"acc_easy": 0.85, "acc_hard": 0.40, "acc_all": 0.70, "sec_per_question": 0.015},
    "system2_always": {"acc_easy": 0.89, "acc_hard": 1.0, "acc_all": 0.90, "sec_per_question": 0.080},
    "fast": {
        "acc_easy": 0.90,
        "acc_hard": 1.0,
        "acc_all": 0.92,
        "sec_per_question": 0.040,
        "system2_rate": 0.3,
        "acc_by_category": {"direct_attributes": 0.9, "relative_position": 0.975},
    },
    "roi": {"target_covered_rate_hard": 0.90, "fallback_rate": 0.0},
    "switch": {"f1_system2": 0.99, "object_names_exact": 0.97, "no_suffix": {"f1_system2": 0.96}},
    "timings": {"roi_train": 150.0, "roi_eval": 20.0},
}


def _row(table: str, label: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def _write(tmp_path, seed: int, results: dict | None) -> None:
    if results is not None:
        (tmp_path / f"{seed}.json").write_text(json.dumps(results))


def test_table_per_seed_with_mean_min_and_checks(tmp_path):
    failing = json.loads(json.dumps(PASSING))
    failing["fast"]["acc_all"] = 0.88  # below System 2 always
    failing["roi"]["fallback_rate"] = 0.05
    del failing["switch"]["no_suffix"]  # an older run: this key is missing
    del failing["timings"]
    _write(tmp_path, 0, PASSING)
    _write(tmp_path, 1, failing)
    _write(tmp_path, 2, None)  # not run yet
    results = read_results([0, 1, 2], lambda s: tmp_path / f"{s}.json")
    assert results[2] == {}
    table = seed_table(results)
    header = table.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")][1:] == [
        "seed 0",
        "seed 1",
        "seed 2",
        "mean",
        "min",
    ]
    assert _row(table, "FaST acc_all") == ["0.920", "0.880", "n/a", "0.900", "0.880"]
    assert _row(table, "FaST s/question") == ["0.0400", "0.0400", "n/a", "0.0400", "0.0400"]
    assert _row(table, "ROI train s") == ["150", "n/a", "n/a", "150", "150"]
    # V*Bench's categories apart, from `acc_by_category`
    assert _row(table, "FaST acc relative_position") == ["0.975", "0.975", "n/a", "0.975", "0.975"]
    assert _row(table, "System 2 always acc direct_attributes") == ["n/a"] * 3 + ["n/a", "n/a"]
    assert _row(table, "ROI eval s")[0] == "20"
    # the switch rows follow the keys the results hold, the suffix variant included
    assert _row(table, "switch F1") == ["0.990", "0.990", "n/a", "0.990", "0.990"]
    assert _row(table, "switch F1 (no_suffix)") == ["0.960", "n/a", "n/a", "0.960", "0.960"]
    assert _row(table, "FaST acc_all >= System-2-always acc_all") == ["yes", "**no**", "n/a", "all: n/a", ""]
    assert _row(table, "ROI fallback rate <= 0.02")[:2] == ["yes", "**no**"]
    assert _row(table, "ROI stage (train + eval) <= 180 s")[:2] == ["yes", "n/a"]
    assert _row(table, "switch F1 (no_suffix) >= 0.95")[:2] == ["yes", "n/a"]
    # every row has a cell per column
    widths = {ln.count("|") for ln in table.splitlines()}
    assert widths == {header.count("|")}


def test_all_seeds_pass_only_when_every_seed_passes():
    below = json.loads(json.dumps(PASSING))
    below["switch"]["object_names_exact"] = 0.90
    table = seed_table({0: PASSING, 3: PASSING})
    assert all(
        _row(table, label)[-2] == "all: yes"
        for label in ("FaST hard >= System-1 hard + 0.20", "switch names exact >= 0.95")
    )
    table = seed_table({0: PASSING, 3: below})
    assert _row(table, "switch names exact >= 0.95") == ["yes", "**no**", "all: **no**", ""]
    assert _row(table, "switch names exact") == ["0.970", "0.900", "0.935", "0.900"]


def test_empty_results_still_show_every_row_as_na():
    table = seed_table({5: {}})
    assert _row(table, "switch F1") == ["n/a", "n/a", "n/a"]
    assert _row(table, "FaST hard >= System-1 hard + 0.20") == ["n/a", "all: n/a", ""]


def test_switch_rows_are_the_phrasings_when_the_results_have_them():
    from playground.demo_seeds import switch_figures

    phrasing = {"f1_system2": 0.97, "object_names_exact": 0.96}
    results = {
        "switch": {**phrasing, "phrasings": {"short": phrasing, "bare": {**phrasing, "f1_system2": 0.9}}}
    }
    labels = [f.label for f in switch_figures([results])]
    assert labels == [
        "switch F1 (phrasings short)", "switch names exact (phrasings short)",
        "switch F1 (phrasings bare)", "switch names exact (phrasings bare)",
    ]  # fmt: skip
    table = seed_table({0: results})
    assert "| switch F1 (phrasings bare) >= 0.95 | **no** |" in table and "| switch F1 >= 0.95 |" not in table
