"""How the reports write numbers: one formatter per kind of figure, used by every section."""

from __future__ import annotations

import math

from bench.analysis.plotting import si

BYTE_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))


def missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x, spec: str) -> str:
    """``x`` formatted with ``spec``, or "–" when there is none."""
    return "–" if missing(x) else format(x, spec)


def si_text(x) -> str:
    return "–" if missing(x) else si(x)


def byte_unit(values) -> tuple[str, int]:
    """The largest unit in which the largest value is at least 1 (3 KiB never prints as 0.0 MiB)."""
    largest = max((v for v in values if not missing(v)), default=0)
    return next(((name, scale) for name, scale in BYTE_UNITS if largest >= scale), ("B", 1))


def bytes_text(x, scale: int) -> str:
    """Bytes in a unit, with enough digits that a small value keeps two significant ones."""
    if missing(x):
        return "–"
    value = x / scale
    if value == 0 or abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:.{max(1, 1 - math.floor(math.log10(abs(value))))}f}"


def lr_text(lr) -> str:
    return "–" if missing(lr) else f"{lr:.0e}".replace("e-0", "e-")


def percent(value, low=None, high=None) -> str:
    """``value`` (a fraction) in percent, with ``[low–high]`` when an interval is given."""
    text = f"{100 * value:.1f}"
    if not missing(low) and not missing(high):
        text += f" [{100 * low:.0f}–{100 * high:.0f}]"
    return text


def span(values, spec: str) -> str:
    """The range of ``values`` ("120–600"), or the one value they share."""
    values = [v for v in values if not missing(v)]
    if not values:
        return "–"
    low, high = min(values), max(values)
    return format(low, spec) if low == high else f"{format(low, spec)}–{format(high, spec)}"


def bpb_text(value, interval=None, digits: int = 3, sign: str = "") -> str:
    """Bits per byte, ``value [low, high]`` with ``digits`` decimals; ``sign="+"`` writes the sign of a
    difference."""
    if missing(value):
        return "–"
    spec = f"{sign}.{digits}f"
    text = f"{value:{spec}}"
    if interval:
        text += f" [{interval[0]:{spec}}, {interval[1]:{spec}}]"
    return text


def signed(value, interval=None) -> str:
    return bpb_text(value, interval, sign="+")


def table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """A markdown table; ``align`` one character per column ("l", "r", "c"), default left then right."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": "---", "r": "---:", "c": ":-:"}
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return lines


def cell_text(text: str) -> str:
    """A value safe inside a markdown table cell: no pipe, no line break."""
    return str(text).replace("|", "\\|").replace("\n", " ")
