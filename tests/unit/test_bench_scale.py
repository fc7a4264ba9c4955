"""bench/scale.py's arithmetic: sizes, the disk check, growth ratios, the fit and projection, the table."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import bench_module

scale = bench_module("scale")


def _row(stage: str, pairs: int, seconds: float, sum_mb: float, cores: int = 2, ok: bool = True) -> dict[str, Any]:
    r = scale.StageResult(stage, pairs, seconds, cores, scale.Peak(100.0, 200.0, sum_mb, 5), ok)
    return dict(r.record())


def test_sizes_parsed_sorted_and_checked() -> None:
    assert scale.parse_sizes("6000,2000,20_000,2000") == [2000, 6000, 20000]
    with pytest.raises(ValueError, match="pair counts"):
        scale.parse_sizes("0,10")
    with pytest.raises(ValueError, match="pair counts"):
        scale.parse_sizes(" , ")


def test_a_size_that_does_not_fit_is_refused_with_the_figures() -> None:
    assert scale.refuse_unfit([1000, 10_000], free_bytes=20 * 10**9, bytes_per_pair=1e6) == []
    refused = scale.refuse_unfit([1000, 60_000], free_bytes=50 * 10**9, bytes_per_pair=1e6)
    assert len(refused) == 1
    assert refused[0].startswith("60,000 pairs need about 60.0 GB")
    assert "45.0 GB is usable" in refused[0]


def test_per_pair_cost_and_rates() -> None:
    r = scale.StageResult("train", 1000, 10.0, 2)
    assert r.pairs_per_s_per_core == 50.0
    assert r.ms_per_pair == 20.0  # 10 s x 2 cores / 1000 pairs
    assert scale.StageResult("train", 0, 0.0, 2).ms_per_pair == 0.0


def test_growth_linear_and_bounded() -> None:
    rows = [_row("index", 1000, 10.0, 1000.0), _row("index", 9000, 99.0, 1500.0), _row("index", 3000, 30, 1100.0)]
    g = scale.growth(rows)
    assert g["sizes"] == 3 and g["pairs_x"] == 9.0
    assert g["cost_ratio"] == 1.1  # 99/9000 over 10/1000
    assert g["marginal_ratio"] == pytest.approx((69 / 6000) / (20 / 2000), abs=1e-3)  # 1.15
    assert g["linear"]
    assert g["sum_mem_x"] == 1.5  # slower than the pairs, yet 62.5 MB a 1000 pairs is 35 GB at the full archive
    assert not g["memory_bounded"] and g["memory_grows"].startswith("sum ")
    assert g["driver_mb_at_full"] == 100.0  # flat driver and worker: not named
    flat = scale.growth([_row("index", n, n / 100, 1000.0 + (n == 9000)) for n in (1000, 3000, 9000)])
    assert flat["memory_bounded"] and flat["memory_grows"] == ""
    assert g["sum_mb_per_1k_pairs"] == 62.5  # 500 MB over 8000 pairs


def test_growth_flags_superlinear_cost_and_memory() -> None:
    rows = [_row("ingest_folder", 1000, 10.0, 100.0), _row("ingest_folder", 4000, 80.0, 400.0)]
    g = scale.growth(rows)
    assert g["cost_ratio"] == 2.0 and not g["linear"]
    assert g["sum_mem_x"] == 4.0 and not g["memory_bounded"]  # memory grew as fast as the pairs
    assert "NOT LINEAR" in scale.summary_line("ingest_folder", g)
    # 0.1 MB a pair carried to the full archive: far above twice the 400 MB measured
    assert g["sum_mb_at_full"] == pytest.approx(100 + 0.1 * (549_488 - 1000), abs=0.1)
    assert "MEMORY GROWS: sum 53.7 GB at 549,488 pairs" in scale.summary_line("ingest_folder", g)


def test_a_fixed_start_up_cannot_hide_a_growing_per_pair_cost() -> None:
    # 60 s of start-up, then 1 ms a pair up to 3000 and 3 ms a pair beyond: the overall ratio looks fine
    rows = [_row("train", 1000, 61.0, 1.0), _row("train", 3000, 63.0, 1.0), _row("train", 9000, 81.0, 1.0)]
    g = scale.growth(rows)
    assert g["cost_ratio"] < 1.3
    assert g["marginal_ratio"] == 3.0 and not g["linear"]
    assert "marginal x3.00" in scale.summary_line("train", g)


def test_growth_ignores_failed_rows_and_needs_two_sizes() -> None:
    rows = [_row("train", 1000, 10.0, 100.0), _row("train", 4000, 1.0, 100.0, ok=False)]
    assert scale.growth(rows) == {"sizes": 1}
    assert scale.summary_line("train", {"sizes": 1}) == "train: one size measured, no ratio"


def test_fit_is_least_squares() -> None:
    a, b = scale.fit([(1000, 12.0), (3000, 16.0), (9000, 28.0)])
    assert a == pytest.approx(10.0) and b == pytest.approx(0.002)
    assert scale.fit([(100, 5.0)]) == (0.0, 0.05)


def test_projection_spreads_the_per_pair_part_over_the_cores() -> None:
    # 10 s fixed + 2 ms a pair on 2 cores: 4 core-ms a pair
    rows = [_row("index", n, 10 + 0.002 * n, 1000 + 0.01 * n) for n in (1000, 3000, 9000)]
    p = scale.project(rows, cores=(16, 64), pairs=549_488)
    assert p["fixed_s"] == pytest.approx(10.0)
    assert p["core_ms_per_pair_marginal"] == pytest.approx(4.0)
    assert p["16_cores_h"] == pytest.approx((10 + 0.004 * 549_488 / 16) / 3600, abs=1e-3)
    assert p["64_cores_h"] == pytest.approx((10 + 0.004 * 549_488 / 64) / 3600, abs=1e-3)
    assert p["sum_peak_mb_at_full"] == pytest.approx(1000 + 0.01 * 549_488, abs=0.1)
    assert scale.project([]) == {}


def test_markdown_table_and_summary_rows() -> None:
    rows = [_row(s, n, 0.01 * n, 500.0) for s in ("train", "synth_packed") for n in (1000, 3000)]
    rows.append(_row("serve_startup", 1000, 5.0, 900.0, ok=False))
    summary, projection = scale.report(rows)
    table = scale.markdown(rows, summary, projection)
    lines = table.splitlines()
    assert lines[0].startswith("| stage | pairs | wall s |")
    body = [x for x in lines[2:] if x.startswith("| ") and "cost ratio" not in x]
    assert body[0].startswith("| synth_packed | 1,000 |")  # the pipeline's order, then by size
    assert any(x.startswith("| serve_startup (failed) | 1,000 |") for x in body)
    assert "| train | 1.00 | - | 1.00 (3.0) |" in table  # cost ratio, no marginal (2 sizes), memory growth
    assert "serve_startup" not in summary  # no successful size: no summary line


def test_a_run_that_cannot_fit_stops_before_any_work(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scale.json"
    code = scale.main(["--sizes", "10,1000000000", "--work", str(tmp_path / "w"), "--out", str(out)])
    assert code == 2
    assert "1,000,000,000 pairs need about" in capsys.readouterr().err
    assert not out.exists() and list((tmp_path / "w").iterdir()) == []
