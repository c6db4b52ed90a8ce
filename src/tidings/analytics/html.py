"""The report as one self-contained HTML page: inline CSS and SVG charts drawn here, no
script, no external file."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from tidings.analytics import histogram
from tidings.analytics.render import number, percent
from tidings.analytics.report import Report
from tidings.analytics.stats import QUANTILES, Stats
from tidings.tables.analytics import OUTCOMES

COLORS = {"sent": "#2e7d32", "failed": "#c62828", "filtered": "#9e9e9e", "delayed": "#f9a825",
          "dead": "#4a148c", "retried": "#ef6c00", "count": "#1565c0"}
_STACKED = ("sent", "failed", "filtered", "delayed", "dead")
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 9px;border-bottom:1px solid #ddd}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;
padding:.6em 1em}.card b{display:block;font-size:1.4em}
.legend span{display:inline-block;margin-right:1em}.legend i{display:inline-block;width:.8em;
height:.8em;margin-right:.3em}svg text{font-size:11px;fill:#555}
"""


def bar_chart(labels: Sequence[str], stacks: Sequence[dict[str, int]], keys: Sequence[str],
              *, width: int = 1000, height: int = 220) -> str:
    """An SVG bar chart, one (stacked) bar per label; each segment has a tooltip."""
    top = max((sum(s.get(k, 0) for k in keys) for s in stacks), default=0) or 1
    left, bottom, plot_h = 50, 20, height - 30
    slot = (width - left - 20) / max(len(labels), 1)  # 20: room for the last label
    every = max(1, len(labels) // 12)  # at most a dozen x labels
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img"><line x1="{left}" y1="{plot_h}" x2="{width}" y2="{plot_h}" '
             f'stroke="#999"/><text x="{left - 6}" y="12" text-anchor="end">{number(top)}'
             f'</text><text x="{left - 6}" y="{plot_h}" text-anchor="end">0</text>']
    for i, (label, stack) in enumerate(zip(labels, stacks, strict=True)):
        x, y = left + i * slot, float(plot_h)
        for key in keys:
            value = stack.get(key, 0)
            if not value:
                continue
            h = value / top * (plot_h - 10)
            y -= h
            parts.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(slot - 2, 1):.1f}" '
                         f'height="{h:.1f}" fill="{COLORS.get(key, "#1565c0")}"><title>'
                         f'{escape(label)} {escape(key)}: {value:,}</title></rect>')
        if i % every == 0:
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{height - bottom + 14}" '
                         f'text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _legend(keys: Sequence[str]) -> str:
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{COLORS[k]}"></i>{k}</span>' for k in keys) + "</p>"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(f'<{tag}{"" if i == 0 else " class=n"}>{escape(c)}</{tag}>'
                       for i, c in enumerate(row))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><tr>{cells('th', head)}</tr>{body}</table>"


def _stats_row(name: str, stats: Stats) -> list[str]:
    return [name, *(number(stats.count(o)) for o in OUTCOMES), percent(stats.success_rate),
            *(number(stats.latency_ms(q), "ms") for q in QUANTILES)]


def short_ms(ms: float) -> str:
    """A bucket bound in its largest whole unit: 250ms, 2.5s, 5m, 1h."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms >= size:
            return f"{ms / size:g}{unit}"
    return f"{ms:g}ms"


def _latency_chart(stats: Stats) -> str:
    counts = histogram.add(stats.buckets, [])
    labels = [f"<{short_ms(b)}" for b in histogram.BOUNDS] + [
        f"≥{short_ms(histogram.BOUNDS[-1])}"]
    return bar_chart(labels, [{"sent": c} for c in counts], ["sent"], height=200)


def report_html(report: Report) -> str:
    """The whole report as an HTML document."""
    total = report.total
    series = sorted(report.series.items())
    step = series[1][0] - series[0][0] if len(series) > 1 else None
    fmt = "%m-%d" if step is not None and step.days else "%H:%M"
    hours = report.hours_of_day or [0] * 24
    cards = [("delivery steps", number(total.total)), ("sent", number(total.count("sent"))),
             ("success rate", percent(total.success_rate)),
             *((f"p{round(q * 100)} latency", number(total.latency_ms(q), "ms"))
               for q in QUANTILES)]
    head = [report.by, *OUTCOMES, "success", *(f"p{round(q * 100)}" for q in QUANTILES)]
    rows = [_stats_row(k or "(none)", s)
            for k, s in sorted(report.rows.items(), key=lambda i: -i[1].total)]
    rows += [_stats_row("all", total), _stats_row("previous period", report.previous)]
    trends = [[f"last {t.name}", number(t.current.total), number(t.previous.total),
               percent(t.change, signed=True), percent(t.current.success_rate)]
              for t in report.trends]
    title = (f"tidings report {report.start:%Y-%m-%d %H:%M} → {report.end:%Y-%m-%d %H:%M} UTC")
    return "".join([
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>",
        '<div class="cards">', *(f'<div class="card">{escape(n)}<b>{escape(v)}</b></div>'
                                 for n, v in cards), "</div>",
        "<h2>Deliveries over time</h2>", _legend(_STACKED),
        bar_chart([f"{at:{fmt}}" for at, _ in series], [s.counts for _, s in series],
                  _STACKED),
        f"<h2>By {escape(report.by)}</h2>", _table(head, rows),
        "<h2>Latency, acceptance to sent</h2>", _latency_chart(total),
        "<h2>Trends</h2>",
        _table(["period", "current", "previous", "change", "success"], trends),
        "<h2>Hours of the day (UTC)</h2>",
        bar_chart([f"{h:02d}" for h in range(24)], [{"count": n} for n in hours], ["count"],
                  height=160),
        "<h2>Top failure reasons</h2>",
        _table(["error", "count"], [[e, number(n)] for e, n in report.failures]),
        "<h2>Top types</h2>",
        _table(["type", "count"], [[t, number(n)] for t, n in report.top_types]),
        "</body></html>\n",
    ])
