"""What every plot of the reports shares: a headless backend, one style per model that stays distinct for
up to 16 models (colour, marker and line style together), readable log axes, and saving.

Import pyplot from here (``from bench.analysis.plotting import plt``) so that the backend is set once,
before pyplot is first imported, on machines without a display.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Style:
    color: tuple[float, float, float]
    marker: str
    linestyle: str

    def kwargs(self) -> dict:
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle}


def model_styles(labels: list[str]) -> dict[str, Style]:
    """A style per label, in order: ten colours of tab10 (tab20's for more than ten models), each with a
    marker and a line style of its own, so that no two of up to 16 models look alike even where two
    colours are close."""
    labels = list(dict.fromkeys(labels))
    palette = sns.color_palette("tab10" if len(labels) <= 10 else "tab20", n_colors=max(1, len(labels)))
    return {
        label: Style(tuple(palette[i]), MARKERS[i % len(MARKERS)], LINESTYLES[(i // len(MARKERS)) % 4])
        for i, label in enumerate(labels)
    }


def si(x: float) -> str:
    """3 significant digits with a k/M/G/T suffix."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def length_axis(ax, lens: list[int]) -> None:
    """A log2 x axis of sequence lengths, a labelled tick at every length measured."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(lens))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v)}"))


def log_y(ax) -> None:
    """A log y axis with labelled ticks at 1, 2 and 5 of every decade (a panel that spans less than a
    decade still gets several), in k/M/G units."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))


def save(fig, path: Path, dpi: int = 120, **kwargs) -> None:
    fig.savefig(path, dpi=dpi, **kwargs)
    plt.close(fig)


__all__ = ["Style", "length_axis", "log_y", "model_styles", "plt", "save", "si", "sns"]
