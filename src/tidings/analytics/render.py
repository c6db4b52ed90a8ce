"""The report as rich tables for the terminal."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tidings.analytics.report import Report
from tidings.analytics.stats import QUANTILES, Stats, change
from tidings.tables.analytics import OUTCOMES


def number(value: float | None, unit: str = "") -> str:
    """A count or a duration with thousands separators; '-' for nothing."""
    if value is None:
        return "-"
    if unit == "ms" and value >= 10_000:
        return f"{value / 1000:,.1f} s"
    return f"{value:,.0f}{' ' + unit if unit else ''}"


def percent(value: float | None, *, signed: bool = False) -> str:
    """A share or a change as a percentage; '-' when undefined."""
    if value is None:
        return "-"
    return f"{value * 100:+.1f} %" if signed else f"{value * 100:.1f} %"


def _stats_columns(table: Table) -> None:
    for outcome in OUTCOMES:
        table.add_column(outcome, justify="right")
    table.add_column("success", justify="right")
    for q in QUANTILES:
        table.add_column(f"p{round(q * 100)}", justify="right")


def _stats_cells(stats: Stats) -> list[str]:
    return [
        *(number(stats.count(o)) for o in OUTCOMES),
        percent(stats.success_rate),
        *(number(stats.latency_ms(q), "ms") for q in QUANTILES),
    ]


def breakdown_table(report: Report) -> Table:
    """Counts by outcome, success rate and latency percentiles per dimension value."""
    table = Table(title=f"deliveries by {report.by}", title_justify="left")
    table.add_column(report.by)
    _stats_columns(table)
    for key, stats in sorted(report.rows.items(), key=lambda item: -item[1].total):
        table.add_row(key or "(none)", *_stats_cells(stats))
    table.add_section()
    table.add_row(Text("all", style="bold"), *_stats_cells(report.total))
    table.add_row(Text("previous period", style="dim"), *_stats_cells(report.previous))
    return table


def trends_table(report: Report) -> Table:
    """The last hour, day and week against the one before each."""
    table = Table(title="trends (total steps; success rate)", title_justify="left")
    for name in ("period", "current", "previous", "change", "success", "before"):
        table.add_column(name, justify="left" if name == "period" else "right")
    for trend in report.trends:
        table.add_row(
            f"last {trend.name}", number(trend.current.total), number(trend.previous.total),
            percent(trend.change, signed=True), percent(trend.current.success_rate),
            percent(trend.previous.success_rate),
        )
    return table


def _ranked(title: str, heading: str, rows: list[tuple[str, int]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(heading, overflow="fold")
    table.add_column("count", justify="right")
    for name, count in rows:
        table.add_row(name, number(count))
    if not rows:
        table.add_row(Text("none", style="dim"), "")
    return table


def _versus(delta: float | None) -> str:
    if delta is None:
        return "nothing in the period before to compare with"
    return f"{percent(delta, signed=True)} vs the period before"


def report_renderable(report: Report) -> RenderableType:
    """The whole report for a rich console."""
    total = report.total
    delta = change(total.total, report.previous.total)
    head = Text.assemble(
        ("tidings report ", "bold"),
        f"{report.start:%Y-%m-%d %H:%M} → {report.end:%Y-%m-%d %H:%M} UTC "
        f"({report.level} roll-ups + events not rolled up yet)\n",
        f"{number(total.total)} delivery steps ({_versus(delta)}), "
        f"{number(total.count('sent'))} sent, success {percent(total.success_rate)}, "
        f"latency p50 {number(total.latency_ms(0.5), 'ms')}, "
        f"p99 {number(total.latency_ms(0.99), 'ms')}",
    )
    peaks = [(f"{hour:02d}:00 UTC", count) for hour, count in report.peak_hours]
    return Group(
        head, breakdown_table(report), trends_table(report),
        _ranked("top failure reasons", "error", report.failures),
        _ranked("peak hours", "hour", peaks),
        _ranked("top types", "type", report.top_types),
    )
