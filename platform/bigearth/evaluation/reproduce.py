"""The reBEN table: the published test-split figures of the reBEN model cards beside what our evaluation wrote.

`bigearth reproduce-table EVAL_ROOT [--out table.md]` reads `EVAL_ROOT/<config name>/metrics.json` (the folder
`jobs/evaluate.py --out` wrote for the run trained with `configs/reben/<config name>.yaml`, or for an imported
official checkpoint) and writes one row per model and published figure: published, ours, difference (points).
docs/reproduce.md has the commands that produce the folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bigearth.core.records import read_json
from bigearth.core.storage import StorageOptions, join, open_fs

#: Test-split figures (in %) from the BIFOLD-BigEarthNetv2-0 model cards (v0.2.0), keyed by config name.
PUBLISHED: dict[str, dict[str, float]] = {
    "resnet50-all": {
        "macro_ap": 70.33,
        "micro_ap": 86.07,
        "macro_f1": 64.42,
        "micro_f1": 76.66,
        "macro_precision": 74.57,
        "micro_precision": 79.80,
    },
    "resnet50-s1": {"macro_ap": 62.84, "micro_ap": 80.07, "micro_f1": 70.20},
    "vit_base_patch8_224-all": {"macro_ap": 66.76, "micro_ap": 84.22},
}
SOURCE = "https://huggingface.co/BIFOLD-BigEarthNetv2-0 (model cards of the v0.2.0 checkpoints, test split)"
#: Figures of ours that have no published counterpart but belong in the table.
EXTRA = ("samples_f1", "lrap", "one_error", "hamming_loss")


def collect(root: str, storage: StorageOptions | None = None) -> dict[str, dict[str, Any]]:
    """`{config name: metrics.json}` for every `<root>/<name>/metrics.json`."""
    fs, base = open_fs(root, storage)
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(fs.glob(join(base, "*", "metrics.json"))):
        name = path.rstrip("/").rsplit("/", 2)[-2]
        found[name] = read_json(fs, path, "evaluation metrics file")  # a damaged one is named (RecordError)
    return found


def table_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in sorted(set(results) | set(PUBLISHED)):
        ours = results.get(name)
        published = PUBLISHED.get(name, {})
        keys = list(published) + [k for k in EXTRA if ours is not None and k not in published]
        for key in keys:
            value = None if ours is None or ours.get(key) is None else 100 * float(ours[key])
            pub = published.get(key)
            rows.append(
                {
                    "model": name,
                    "metric": key,
                    "published": pub,
                    "ours": value,
                    "difference": None if value is None or pub is None else value - pub,
                    "split": None if ours is None else ours.get("split"),
                    "samples": None if ours is None else ours.get("samples"),
                }
            )
    return rows


def _cell(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def table_markdown(results: dict[str, dict[str, Any]]) -> str:
    rows = table_rows(results)
    lines = [
        "| model | metric | published | ours | difference | split (pairs) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        where = "-" if r["split"] is None else f"{r['split']} ({r['samples']})"
        lines.append(
            f"| {r['model']} | {r['metric']} | {_cell(r['published'])} | {_cell(r['ours'])} | "
            f"{_cell(r['difference'], signed=True)} | {where} |"
        )
    missing = sorted(set(PUBLISHED) - set(results))
    lines += [
        "",
        f"In %; difference = ours - published, in points. Published: {SOURCE}.",
    ]
    if missing:
        lines.append(f"Not evaluated yet: {', '.join(missing)}.")
    return "\n".join(lines) + "\n"


def write_table(root: str, out: str | None = None, storage: StorageOptions | None = None) -> str:
    results = collect(root, storage)
    if not results:
        raise FileNotFoundError(f"{root}: no <config name>/metrics.json (write them with jobs/evaluate.py --out)")
    text = table_markdown(results)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return text
