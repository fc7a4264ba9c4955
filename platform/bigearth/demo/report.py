"""The demo's report: one HTML page (plus the JSON and PNG files it shows) with the training curves, the test
metrics table and per-class chart, the figures by country and season, quicklooks of sample patches with true and
predicted labels, retrieval metrics, the nearest neighbours of a few query patches with scores and shared labels,
and the segmentation model's figures with predicted and reference maps beside each patch's quicklook."""

from __future__ import annotations

import html
import json
import os
import shutil
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left} #summary td{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:1rem} .card{width:180px;font-size:.8rem}
.card img{width:180px;height:180px;image-rendering:pixelated;border:1px solid #999}
.ok{color:#176f2c} .miss{color:#a0102a} .extra{color:#9a6700} .muted{color:#666}
.row{display:flex;gap:.8rem;align-items:flex-start;margin:1rem 0;overflow-x:auto}
.row .card{width:150px} .row .card img{width:150px;height:150px} .query img{border:3px solid #1f5fbf}
.card .muted{overflow-wrap:anywhere}
.legend{display:flex;flex-wrap:wrap;gap:.3rem .9rem;font-size:.8rem;margin:.5rem 0}
.legend span.swatch{display:inline-block;width:.9rem;height:.9rem;border:1px solid #666;vertical-align:middle;
margin-right:.3rem}
"""

_SCRIPT = """
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok + '/' + imgs.length;
});
"""


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.1f}"


def _recall(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def _labels(true: list[str], pred: list[str]) -> str:
    parts = []
    for label in sorted(set(true) | set(pred)):
        cls = "ok" if label in true and label in pred else "miss" if label in true else "extra"
        mark = {"ok": "✓", "miss": "✗ missed", "extra": "+ predicted"}[cls]
        parts.append(f'<div class="{cls}">{html.escape(label)} <span class="muted">{mark}</span></div>')
    return "".join(parts)


def _legend() -> str:
    """The 19 classes in their map colours."""
    from bigearth.core.labels import BEN19, BEN19_COLOURS

    items = "".join(
        f'<div><span class="swatch" style="background:rgb{c}"></span>{html.escape(n)}</div>'
        for n, c in zip(BEN19, BEN19_COLOURS, strict=True)
    )
    return f'<div class="legend" id="legend">{items}<div class="muted">transparent: no class (ignored)</div></div>'


def write_report(out: str, data: dict[str, Any]) -> str:
    """Write `out/report.html` and `out/report.json`; image paths in `data` are copied into `out/images/`.

    `data` keys: title, summary (dict), explorer (the web page's URL, while it is served), curves_png,
    per_class_png, by_group_png, metrics (evaluate's metrics.json), retrieval (evaluate_retrieval's JSON),
    segmentation (a segmentation model's metrics.json), per_class_iou_png, seg_by_group_png, samples [{patch_id,
    true, pred, png}], queries [{patch_id, labels, png, hits: [{patch_id, score, labels, shared, png}]}],
    segmentations [{patch_id, png, predicted_png, reference_png, top: [[class, share], ...]}], real [{name, labels,
    top: [[class, p], ...]}]. Two images of one file name (`by_group.png` of eval/ and eval-segmentation/) are both
    kept: the second is prefixed with its folder's name.
    """
    images = os.path.join(out, "images")
    os.makedirs(images, exist_ok=True)

    copied: dict[str, str] = {}  # name in images/ -> the file copied there

    def img(path: str | None, alt: str) -> str:
        if not path:
            return ""
        name = os.path.basename(path)
        if os.path.abspath(os.path.dirname(path)) != os.path.abspath(images):
            source = os.path.abspath(path)
            if copied.get(name, source) != source:  # two outputs of one name (eval/ and eval-segmentation/)
                name = f"{os.path.basename(os.path.dirname(source))}-{name}"
            copied[name] = source
            shutil.copyfile(path, os.path.join(images, name))
        return f'<img src="images/{html.escape(name)}" alt="{html.escape(alt)}">'

    m, r = data.get("metrics", {}), data.get("retrieval", {})
    body = [f"<h1>{html.escape(data.get('title', 'BigEarthNet demo'))}</h1>"]

    def show(v: Any) -> str:
        return ", ".join(f"{k} {x}" for k, x in v.items()) if isinstance(v, dict) else str(v)

    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(show(v))}</td></tr>"
        for k, v in data.get("summary", {}).items()
    )
    body.append(f'<table id="summary">{rows}</table>')
    if data.get("explorer"):  # only while the service runs (`bigearth demo --serve`): never a dead link
        url = html.escape(data["explorer"])
        body.append(
            f'<p id="explorer">Explore the archive in your browser: <a href="{url}">{url}</a> (patches, filters, '
            "the model's probabilities, nearest neighbours, your own uploads), while the demo keeps serving.</p>"
        )
    body.append("<h2>Training curves</h2>" + img(data.get("curves_png"), "training curves"))
    if m:
        body.append(f"<h2>Test metrics ({m.get('samples')} pairs)</h2>")
        body.append(
            '<table id="metrics"><tr><th>average</th><th>precision</th><th>recall</th><th>F1</th><th>AP</th></tr>'
        )
        for avg in ("micro", "macro"):
            body.append(
                f"<tr><td>{avg}</td>"
                + "".join(f"<td>{_pct(m.get(f'{avg}_{k}'))}</td>" for k in ("precision", "recall", "f1", "ap"))
                + "</tr>"
            )
        body.append("</table>" + img(data.get("per_class_png"), "per-class scores"))
        groups = [(key, m[key]) for key in ("by_country", "by_season") if m.get(key)]
        if groups:
            body.append("<h3>By country and by season</h3>")
            body.append('<table id="by-group"><tr><th>group</th><th>pairs</th><th>micro F1</th><th>macro AP</th></tr>')
            for key, table in groups:
                for name, g in table.items():
                    few = ' <span class="muted">(few pairs)</span>' if g.get("few_pairs") else ""
                    body.append(
                        f"<tr><td>{html.escape(key[3:])}: {html.escape(str(name))}{few}</td><td>{g.get('pairs')}</td>"
                        f"<td>{_pct(g.get('micro_f1'))}</td><td>{_pct(g.get('macro_ap'))}</td></tr>"
                    )
            body.append("</table>")
        if data.get("by_group_png") and os.path.exists(data["by_group_png"]):
            body.append(img(data["by_group_png"], "scores by country and season"))
    if data.get("samples"):
        body.append('<h2>Sample test patches: true and predicted labels</h2><div class="grid">')
        for s in data["samples"]:
            body.append(
                f'<div class="card">{img(s["png"], s["patch_id"])}<div class="muted">'
                f"{html.escape(s['patch_id'][-24:])}</div>{_labels(s['true'], s['pred'])}</div>"
            )
        body.append("</div>")
    if r.get("modes"):
        k = r["k"]
        body.append(f"<h2>Retrieval ({r['queries']} test queries against {r['archive_pairs']} train pairs)</h2>")
        body.append(
            f'<table id="retrieval"><tr><th>mode</th><th>mAP@{k}</th><th>P@{k}</th><th>R@{k}</th>'
            f"<th>NDCG@{k}</th><th>recall vs exact</th></tr>"
        )
        for mode, v in r["modes"].items():
            body.append(
                f"<tr><td>{html.escape(mode)}</td><td>{_pct(v[f'map@{k}'])}</td>"
                f"<td>{_pct(v[f'precision@{k}'])}</td><td>{_pct(v[f'recall@{k}'])}</td>"
                f"<td>{_pct(v[f'ndcg@{k}'])}</td><td>{_recall(v[f'index_recall@{k}_vs_exact'])}</td></tr>"
            )
        body.append("</table>")
    for q in data.get("queries", []):
        body.append(f"<h3>Neighbours of {html.escape(q['patch_id'])}</h3><div class='row'>")
        body.append(
            f'<div class="card query">{img(q["png"], q["patch_id"])}<div><b>query</b></div>'
            + "".join(f"<div>{html.escape(x)}</div>" for x in q["labels"])
            + "</div>"
        )
        for h in q["hits"]:
            shared = ", ".join(h["shared"]) or "none"
            body.append(
                f'<div class="card">{img(h["png"], h["patch_id"])}<div>score {h["score"]:.3f}</div>'
                f'<div class="{"ok" if h["shared"] else "miss"}">shared: {html.escape(shared)}</div></div>'
            )
        body.append("</div>")
    seg = data.get("segmentation") or {}
    if seg:
        body.append(f"<h2>Land-cover segmentation ({seg.get('patches')} test pairs)</h2>")
        body.append(
            '<table id="segmentation"><tr><th>mIoU</th><th>pixel accuracy</th><th>frequency-weighted IoU</th>'
            "<th>scored pixels</th><th>patches without a scored pixel</th></tr>"
            f"<tr><td>{_pct(seg.get('miou'))}</td><td>{_pct(seg.get('pixel_accuracy'))}</td>"
            f"<td>{_pct(seg.get('fw_iou'))}</td><td>{seg.get('scored_pixels')}</td>"
            f"<td>{seg.get('unscored_patches')}</td></tr></table>"
        )
        body.append(img(data.get("per_class_iou_png"), "per-class IoU"))
        if data.get("seg_by_group_png") and os.path.exists(data["seg_by_group_png"]):
            body.append(img(data["seg_by_group_png"], "mIoU by country and season"))
    if data.get("segmentations"):
        body.append("<h3>Predicted and reference maps</h3>" + _legend())
        for x in data["segmentations"]:
            top = ", ".join(f"{html.escape(c)} {100 * p:.0f}%" for c, p in x["top"])
            body.append(
                f"<div class='row segmentation'><div class='card'>{img(x['png'], x['patch_id'])}"
                f"<div class='muted'>{html.escape(x['patch_id'][-24:])}</div></div>"
                f"<div class='card'>{img(x['predicted_png'], 'predicted map')}<div><b>predicted</b></div>"
                f"<div class='muted'>{top}</div></div>"
                f"<div class='card'>{img(x['reference_png'], 'reference map')}<div><b>reference</b></div></div></div>"
            )
    if data.get("real"):
        body.append(
            "<h2>Real BigEarthNet patches classified through the API</h2><table id='real'>"
            "<tr><th>patch</th><th>predicted labels</th><th>top classes</th></tr>"
        )
        for x in data["real"]:
            top = ", ".join(f"{html.escape(c)} {100 * p:.0f}%" for c, p in x["top"])
            body.append(
                f"<tr><td>{html.escape(x['name'])}</td><td>{html.escape(', '.join(x['labels']) or '-')}</td>"
                f"<td>{top}</td></tr>"
            )
        body.append("</table>")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(data.get('title', 'report'))}"
        f"</title><style>{_CSS}</style><script>{_SCRIPT}</script></head><body>{''.join(body)}</body></html>"
    )
    path = os.path.join(out, "report.html")
    with open(path, "w") as f:
        f.write(page)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({k: v for k, v in data.items()}, f, indent=1, default=str)
    return path
