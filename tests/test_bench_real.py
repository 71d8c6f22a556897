"""`make bench-real`'s harness: every entry point it runs exists, and a failing one is reported, not fatal."""

from __future__ import annotations

import sys
from pathlib import Path

from playground.bench_real import ROOT, EntryPoint, Row, entry_points, last_error_line, run_entry_point, table

DEEPSPEED_LOG = """[rank0]:   File "deepspeed/runtime/zero/utils.py", line 218, in defragment
[rank0]:     assert len(set(t.dtype for t in tensors)) == 1
[rank0]:            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
[rank0]: AssertionError
\tMaximum resident set size (kbytes): 3509480
"""


def test_every_entry_point_is_a_real_script(tmp_path):
    eps = entry_points(tmp_path, tmp_path / "base", steps=2)
    assert len({ep.name for ep in eps}) == len(eps) == 8
    for ep in eps:
        script = ep.command[1] if ep.command[0] == "bash" else ep.command[ep.command.index("train_ds.py")]
        assert (ROOT / ep.cwd / script).is_file(), ep.name
        assert ep.env.get("BF16", "True") == "True" and "--precision=fp32" not in ep.command


def test_a_failing_entry_point_prints_failed_and_its_error(tmp_path):
    assert last_error_line(DEEPSPEED_LOG) == (
        "[rank0]: AssertionError: assert len(set(t.dtype for t in tensors)) == 1"
    )
    failing = EntryPoint(
        "boom", ".", [sys.executable, "-c", "raise ValueError('bad record 3')"], {}, str(tmp_path)
    )
    row = run_entry_point(failing, tmp_path, timeout=60)
    assert not row.ok and "ValueError: bad record 3" in row.error
    ok = Row("fine", True, 1.5, 2.25, 10.0)
    printed = table([ok, row])
    assert "| fine | ok | 1.5 | 2.25 | 10 |" in printed
    assert "| boom | FAILED |" in printed and "boom: FAILED exit 1" in printed
    assert Path(tmp_path / "boom.log").is_file()
