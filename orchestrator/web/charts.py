"""Charts drawn on the server as SVG: readable without JavaScript, each with a text
alternative (``aria-label`` on the chart, a ``<title>`` on every bar)."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

COLOURS = {"passed": "#2ea44f", "failed": "#cb2431", "error": "#8250df", "skipped": "#afb8c1", "flaky": "#dbab09"}


@dataclass(frozen=True)
class Bar:
    label: str  # what the bar's tooltip says
    value: float
    kind: str  # a key of COLOURS


def bar_chart(
    bars: list[Bar], summary: str, unit: str = "s", width: int = 720, height: int = 160, top: float | None = None
) -> str:
    """One bar per value, oldest left; the tallest fills the height (or ``top`` does)."""
    if not bars:
        return f'<p class="muted">{escape(summary)}: no runs yet</p>'
    top = top or max(b.value for b in bars) or 1.0
    step = width / len(bars)
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(summary)}" width="{width}" height="{height + 16}" '
        f'viewBox="0 0 {width} {height + 16}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, bar in enumerate(bars):
        h = max(1.0, bar.value / top * height)
        parts.append(
            f'<rect class="bar" x="{i * step + 1:.1f}" y="{height - h:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{COLOURS.get(bar.kind, "#6e7781")}"><title>{escape(bar.label)}</title></rect>'
        )
    parts.append(f'<text x="0" y="{height + 13}" font-size="11" fill="#57606a">max {top:.3g} {escape(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def sparkline(values: list[float], summary: str, width: int = 120, height: int = 20) -> str:
    """A line of ``values`` (oldest left), for a table cell."""
    if len(values) < 2:
        return f'<span class="muted" title="{escape(summary)}">–</span>'
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 1 - v / top * (height - 2):.1f}" for i, v in enumerate(values))
    return (
        f'<svg class="spark" role="img" aria-label="{escape(summary)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(summary)}</title>'
        f'<polyline fill="none" stroke="#0969da" stroke-width="1.5" points="{points}"/></svg>'
    )
