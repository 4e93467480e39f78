"""Charts drawn on the server as SVG: readable without JavaScript, each with a text
alternative (``aria-label`` on the chart, a ``<title>`` on every bar: its value on hover),
a value axis with a few labelled ticks, and under the bars what each one is (a commit, a
day) wherever the labels fit."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

COLOURS = {"passed": "#2ea44f", "failed": "#cb2431", "error": "#8250df", "skipped": "#afb8c1", "flaky": "#dbab09"}
BELOW = 18  # room under the bars for their labels
CHAR = 6.2  # width of a label's character at font-size 10


@dataclass(frozen=True)
class Bar:
    label: str  # what the bar's tooltip says
    value: float
    kind: str  # a key of COLOURS
    tick: str = ""  # written under the bar, where it fits (a commit, a day)
    parts: tuple[tuple[float, str], ...] = ()  # a stacked bar: (value, kind) from the bottom up


def nice_top(value: float) -> float:
    """The axis's end: ``value`` rounded up to 1, 2, 2.5 or 5 times a power of ten."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return float(next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value * (1 - 1e-9)))


def _ticks(top: float) -> int:
    """How many steps the axis has: 4 or 5, whichever makes each a round number (0, 25,
    50, 75, 100 %; 0, 1, 2 ... 5 s), else 2."""
    for count in (4, 5):
        step = top / count
        mantissa = step / 10 ** math.floor(math.log10(step))
        if any(abs(mantissa - m) < 1e-6 for m in (1, 2, 2.5, 5)):
            return count
    return 2


def _whole_ticks(top: float) -> int:
    """Steps of a count's axis: one per count up to 5, else 5, 4 or 2 whole steps."""
    if top <= 5:
        return max(1, int(top))
    return next((c for c in (5, 4, 2) if float(top / c).is_integer()), 1)


def _number(value: float, unit: str) -> str:
    text = f"{value:.3g}" if value < 1000 else f"{value:,.0f}"
    return f"{text}{'' if unit in ('', '%') else ' '}{unit}"


def bar_chart(
    bars: list[Bar],
    summary: str,
    unit: str = "s",
    width: int = 720,
    height: int = 160,
    top: float | None = None,
    whole: bool = False,
) -> str:
    """One bar per value, oldest left, on an axis from 0 to ``top`` (else the largest value,
    rounded up to a round number); a stacked bar's parts one above the other. ``whole``:
    the values are counts, and the axis says only whole numbers."""
    if not bars:
        return f'<p class="muted">{escape(summary)}: no runs yet</p>'
    top = top or nice_top(max(max(b.value for b in bars), 1 if whole else 0))
    ticks = _whole_ticks(top) if whole else _ticks(top)
    scale, shown = (1000, "ms") if unit == "s" and top < 1 else (1, unit)  # 250 ms, not 0.25 s
    axis = max(len(_number(scale * top * k / ticks, shown)) for k in range(ticks + 1)) * CHAR + 8
    plot = width - axis
    step = plot / len(bars)
    labelled = any(b.tick for b in bars)
    total_height = height + (BELOW if labelled else 6)
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(summary)}" width="{width}" height="{total_height}" '
        f'viewBox="0 0 {width} {total_height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for k in range(ticks + 1):  # the value axis: gridlines and their labels
        value = top * k / ticks
        y = height - value / top * (height - 6)
        parts.append(f'<line class="grid" x1="{axis}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d0d7de"/>')
        parts.append(
            f'<text class="tick" x="{axis - 4}" y="{y + 3.5:.1f}" font-size="10" fill="#57606a" '
            f'text-anchor="end">{escape(_number(scale * value, shown))}</text>'
        )
    for i, bar in enumerate(bars):
        x = axis + i * step
        base = float(height)
        for value, kind in [p for p in bar.parts if p[0] > 0] or [(bar.value, bar.kind)]:
            h = max(1.0, value / top * (height - 6))
            parts.append(
                f'<rect class="bar" x="{x + 1:.1f}" y="{base - h:.1f}" width="{max(step - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{COLOURS.get(kind, "#6e7781")}"><title>{escape(bar.label)}</title></rect>'
            )
            base -= h
    if labelled:  # every k-th bar's label, so that none overlaps the next
        longest = max(len(b.tick) for b in bars) * CHAR + 6
        every = max(1, math.ceil(longest / step))
        for i in range(0, len(bars), every):
            x = axis + i * step + step / 2
            parts.append(
                f'<text class="label" x="{x:.1f}" y="{height + 13}" font-size="10" fill="#57606a" '
                f'text-anchor="middle">{escape(bars[i].tick)}</text>'
            )
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
