"""``monai_continual.report``: summary.md and the printed table, byte for byte what the main job wrote before the
move."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_continual.report import summary_markdown, summary_table

#: Summaries with the summary.md text and printed table that the formatting produced when it was still
#: ``MultiSiteExperiment.markdown`` / ``.table`` (captured from that code; see the file's "about").
FIXTURE = Path(__file__).with_name("report_summaries.json")
CASES = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_summary_markdown_is_unchanged(case):
    expected = CASES[case]
    # through JSON text, as a federated run reads summary.json back
    summary = json.loads(json.dumps(expected["summary"]))
    assert summary_markdown(summary) == expected["markdown"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_summary_table_is_unchanged(case):
    expected = CASES[case]
    assert summary_table(expected["summary"]) == expected["table"]


def test_the_fixture_reaches_every_section():
    text = "\n".join(c["markdown"] for c in CASES.values())
    for section in ("## The papers' comparisons", "## Training budget", "## Site order", "## VCL in increasing",
                    "Increasing minus decreasing", "## Goals", "(+0.02)", "**no**", "too short to judge", "| nan |"):
        assert section in text, section
    assert any("nan" in c["table"] and "-0.123" in c["table"] for c in CASES.values())


def test_the_experiment_delegates_to_report():
    from monai_continual.experiment import MultiSiteExperiment

    summary = CASES["main_job_bundle_run"]["summary"]
    assert MultiSiteExperiment.markdown(summary) == CASES["main_job_bundle_run"]["markdown"]
    assert MultiSiteExperiment.table(summary) == CASES["main_job_bundle_run"]["table"]
