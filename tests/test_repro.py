"""cecl.repro's summary: which stages ran, were reused or restored, and each stage's wall time."""

from __future__ import annotations

import pytest

from cecl.repro import stage_seconds, summary

LINES = [
    (10.0, "Running stage 'prepare@bm':\n"),
    (10.5, "> python -m stages.prepare --dataset bm\n"),
    (14.0, "Stage 'prepare@fm' didn't change, skipping\n"),
    (14.2, "Running stage 'pretrain@bm-cecl-0':\n"),
    (40.2, "Stage 'probe@bm-cecl-0' is cached - skipping run, checking out outputs\n"),
    (41.0, "Running stage 'aggregate':\n"),
]


def test_each_ran_stage_lasts_until_the_next_stage_line_or_the_end() -> None:
    seconds = stage_seconds(LINES, end=50.0)
    assert seconds == pytest.approx({"prepare@bm": 4.0, "pretrain@bm-cecl-0": 26.0, "aggregate": 9.0})


def test_summary_names_times_and_counts() -> None:
    text = "".join(line for _, line in LINES)
    lines = summary(text, {"prepare@bm": "changed deps"}, stage_seconds(LINES, 50.0), total=45.4)
    assert lines[0] == "[repro] 3 stage(s) ran, 1 reused (up to date), 1 restored from the run-cache in 45 s"
    assert "  ran      prepare@bm (4.0 s): changed deps" in lines
    assert "  ran      pretrain@bm-cecl-0 (26.0 s): an upstream stage changed its outputs" in lines
    assert any(line.startswith("  reused   prepare@fm") for line in lines)
    assert any(line.startswith("  restored probe@bm-cecl-0") for line in lines)
