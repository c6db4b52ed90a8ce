"""The HTML report: one self-contained page whose charts are inline SVG."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

from tidings.analytics.html import bar_chart, report_html
from tidings.analytics.report import Report, Trend
from tidings.analytics.stats import Stats

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _stats(sent: int, failed: int) -> Stats:
    stats = Stats()
    stats.add("sent", sent, sent * 100.0, 180.0, [0, 0, 0, 0, 0, sent])
    stats.add("failed", failed, 0.0, 0.0, None)
    return stats


def _report() -> Report:
    series = {START + timedelta(hours=h): _stats(10 + h, h) for h in range(3)}
    return Report(
        start=START, end=START + timedelta(hours=3), level="minute", by="tenant",
        total=_stats(33, 3), previous=_stats(20, 1),
        rows={"<acme & co>": _stats(33, 3)}, series=series,
        trends=[Trend("hour", _stats(12, 2), _stats(11, 1))],
        peak_hours=[(11, 14)], top_types=[("welcome", 36)],
        failures=[("550 <no such user>", 3)],
    )


def test_the_page_needs_no_other_file() -> None:
    html = report_html(_report())

    assert html.startswith("<!doctype html>")
    assert "<script" not in html
    assert "<link" not in html
    assert "src=" not in html


def test_the_page_escapes_names_from_the_data() -> None:
    html = report_html(_report())

    assert "&lt;acme &amp; co&gt;" in html
    assert "550 &lt;no such user&gt;" in html
    assert "<acme" not in html


def test_each_chart_is_well_formed_svg() -> None:
    html = report_html(_report())
    charts = [f"<svg{part.split('</svg>')[0]}</svg>" for part in html.split("<svg")[1:]]

    assert len(charts) == 3  # over time, latency, hours of the day
    for chart in charts:
        ElementTree.fromstring(chart)


def test_a_bar_chart_draws_one_segment_per_non_zero_value_with_a_tooltip() -> None:
    svg = bar_chart(["a", "b"], [{"sent": 3, "failed": 1}, {"sent": 0}], ["sent", "failed"])

    root = ElementTree.fromstring(svg)
    titles = root.findall("{http://www.w3.org/2000/svg}rect/{http://www.w3.org/2000/svg}title")
    assert [title.text for title in titles] == ["a sent: 3", "a failed: 1"]
