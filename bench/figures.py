"""Figures a bench script measured, each beside its goal and the anchor measured in the same run.

Every bench script prints its figures and saves them as JSON under bench/results/ (one file per
script); bench/report.py turns the saved files into the Markdown table the README shows.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    """One measured figure. ratio = value / anchor (None without an anchor); met: the goal holds."""

    figure: str
    value: float
    unit: str
    goal: str
    met: bool
    anchor_name: str = ""
    anchor: float | None = None
    note: str = ""
    ratio: float | None = field(default=None)

    def __post_init__(self) -> None:
        if self.anchor:
            self.ratio = self.value / self.anchor


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def show(figures: list[Figure]) -> None:
    """Print each figure beside its anchor, the ratio and the goal."""
    for f in figures:
        anchor = f" | {f.anchor_name} {fmt(f.anchor, f.unit)} | ratio {f.ratio:.2f}" if f.ratio is not None else ""
        print(f"{'met ' if f.met else 'MISS'} {f.figure}: {fmt(f.value, f.unit)}{anchor} | goal {f.goal}")


def save(script: str, figures: list[Figure], context: str) -> Path:
    """Write the figures of one bench script to bench/results/{script}.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{script}.json"
    payload = {
        "script": script,
        "context": context,
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "figures": [asdict(f) for f in figures],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
