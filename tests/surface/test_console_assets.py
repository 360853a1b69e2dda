"""The console's vendored htmx and uPlot are the npm packages' own files, at the versions package.json pins."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "shared" / "console" / "static" / "vendor"
COPIES = {
    "htmx.min.js": ("htmx.org", "dist/htmx.min.js"),
    "htmx.LICENSE": ("htmx.org", "LICENSE"),
    "uPlot.iife.min.js": ("uplot", "dist/uPlot.iife.min.js"),
    "uPlot.min.css": ("uplot", "dist/uPlot.min.css"),
    "uPlot.LICENSE": ("uplot", "LICENSE"),
}


def test_package_json_pins_the_vendored_packages_exactly() -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]
    for package in {p for p, _ in COPIES.values()}:
        assert re.fullmatch(r"\d+\.\d+\.\d+", pinned[package]), f"{package} must be pinned exactly"


@pytest.mark.parametrize("name", sorted(COPIES))
def test_each_vendored_file_is_the_packages_own(name: str) -> None:
    package, path = COPIES[name]
    installed = ROOT / "node_modules" / package
    if not installed.exists():
        pytest.skip(f"node_modules/{package} is not installed (make setup installs it)")
    version = json.loads((installed / "package.json").read_text())["version"]
    assert version == json.loads((ROOT / "package.json").read_text())["devDependencies"][package]
    assert (VENDOR / name).read_bytes() == (installed / path).read_bytes(), "run `make console-assets`"


def test_the_pages_load_no_script_or_style_from_elsewhere() -> None:
    for template in (ROOT / "shared" / "console" / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), template.name
        assert "<script>" not in text and " style=" not in text, template.name  # the CSP would refuse them
        assert not re.search(r"\son[a-z]+=", text), f"{template.name}: an inline event handler"
