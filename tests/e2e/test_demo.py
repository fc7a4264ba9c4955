"""The newcomer's path: the demo end to end at a small size (synth -> ingest -> train -> evaluate -> index ->
retrieval metrics -> segmentation -> serve -> SDK -> report), then the report rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from browser import binaries
from helpers import SHARED

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from bigearth.demo.run import run_demo

    work = tmp_path_factory.mktemp("demo")
    result = run_demo(str(work), pairs=200, epochs=2, port=0, shared=str(SHARED), samples=4, queries=2)
    result["workdir"] = work
    return result


def test_the_demo_writes_a_report_holding_the_metrics_files_numbers(demo: dict[str, Any]) -> None:
    work: Path = demo["workdir"]
    report = work / "report"
    data = json.loads((report / "report.json").read_text())
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    retrieval = json.loads((work / "retrieval" / "retrieval.json").read_text())
    for key in ("micro_f1", "macro_ap", "micro_precision", "samples"):
        assert data["metrics"][key] == metrics[key]
    assert data["retrieval"]["modes"] == retrieval["modes"]
    page = (report / "report.html").read_text()
    assert f"{100 * metrics['micro_f1']:.1f}" in page and f"{100 * metrics['macro_ap']:.1f}" in page
    history = [json.loads(x) for x in (work / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert data["history"] == history and len(history) == 2
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) >= 2 + 4 + 2 * 6  # curves, per-class, samples, queries with 5 neighbours each
    assert all((report / s).stat().st_size > 100 for s in srcs)
    assert len(data["samples"]) == 4 and all(s["pred"] is not None for s in data["samples"])
    assert len(data["queries"]) == 2 and all(len(q["hits"]) == 5 for q in data["queries"])
    for q in data["queries"]:
        for h in q["hits"]:
            assert h["shared"] == sorted(set(h["labels"]) & set(q["labels"]))
    seg = json.loads((work / "eval-segmentation" / "metrics.json").read_text())
    for key in ("miou", "pixel_accuracy", "fw_iou", "scored_pixels", "patches"):
        assert data["segmentation"][key] == seg[key]
    assert seg["patches"] == metrics["samples"] and seg["scored_pixels"] > 0  # every test pair has its map
    assert f"{100 * seg['miou']:.1f}" in page and '<table id="segmentation">' in page
    assert len(data["segmentations"]) == 2
    for x in data["segmentations"]:  # quicklook, predicted map, reference map: each a real PNG in the report
        for key in ("png", "predicted_png", "reference_png"):
            assert f'src="images/{Path(x[key]).name}"' in page
        assert 0 < sum(share for _, share in x["top"]) <= 1.0 + 1e-6
    if (SHARED / "bigearthnet" / "real").exists():
        assert len(data["real"]) >= 3 and all(len(x["top"]) == 3 for x in data["real"])


def test_the_report_renders_in_headless_chromium(demo: dict[str, Any]) -> None:
    page = Path(demo["report"])
    out = subprocess.run(
        [
            binaries()[0],  # Debian's chromium (`make test` installs it)
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    dom = out.stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded, dom[:500]
    ok, total = map(int, loaded.groups())
    assert total >= 18 + 1 + 2 * 3 and ok == total  # every image decoded (naturalWidth > 0), none broken
    assert '<table id="metrics">' in dom and '<table id="retrieval">' in dom and "Neighbours of" in dom
    assert '<table id="segmentation">' in dom and 'id="legend"' in dom


def test_the_report_links_to_the_explorer_page_only_while_it_is_served(tmp_path: Path) -> None:
    from bigearth.demo.report import write_report

    served = Path(write_report(str(tmp_path / "a"), {"explorer": "http://127.0.0.1:8000/"})).read_text()
    assert '<p id="explorer">' in served and '<a href="http://127.0.0.1:8000/">' in served
    assert 'id="explorer"' not in Path(write_report(str(tmp_path / "b"), {"explorer": None})).read_text()
