"""The explorer page's land-cover map view in headless Chromium: a synthetic v2 archive ingested WITH its reference
maps, served in-process (`bigearth.serving.local`, under uvicorn on a local port: the page, a random `tiny`
classifier and its index, a random `seg-tiny`); a patch view shows the predicted map over the quicklook beside the
reference map, the legend in the nomenclature's colours, and the toggles and the opacity slider act on the overlay.
The same files served without a segmentation model: the map view stays hidden. The Serve wiring of the routes is
tests/integration/test_serve.py; the page's other parts are its headless Chromium test."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bigearth.core.labels import BEN19, BEN19_COLOURS, IGNORE_INDEX, reference_targets
from helpers import free_ports, random_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from bigearth.execution.executors import LocalExecutor
    from bigearth.ingest.job import ingest
    from bigearth.retrieval.indexer import build_index
    from bigearth.synth.archive import synthesize

    root = tmp_path_factory.mktemp("mapview")
    synthesize(str(root / "v2"), layout="v2", pairs=30, seed=11, progress=False, workers=1, reference_maps=True)
    ingest(str(root / "v2"), str(root / "shards"), shard_size=30, executor=LocalExecutor(progress=False))
    ck = random_checkpoint(root / "ck")
    build_index(
        str(ck), str(root / "shards"), str(root / "index"), progress=False, executor=LocalExecutor(progress=False)
    )
    seg = random_checkpoint(root / "seg", "seg-tiny", model_kwargs={"fusion": "late"})
    return {"shards": root / "shards", "ck": ck, "index": root / "index", "seg": seg}


@contextmanager
def served(files: dict[str, Path], segmentation: bool) -> Iterator[str]:
    """The whole service in this process under uvicorn on a free local port; its URL."""
    import uvicorn

    from bigearth.serving.args import AppArgs
    from bigearth.serving.local import create_local_app

    args = AppArgs(
        checkpoint=str(files["ck"]),
        index=str(files["index"]),
        data=str(files["shards"]),
        segmentation_checkpoint=str(files["seg"]) if segmentation else None,
    )
    app = create_local_app(args)
    (port,) = free_ports(1)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the in-process server did not start"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.service.retriever.retriever.index.close()


def _pixel(browser: Any, css: str, x: int, y: int) -> list[int]:
    """The RGBA of pixel (x, y) of the image `css` as the browser decoded it (drawn at its natural size)."""
    script = (
        "const i = document.querySelector(arguments[0]); const c = document.createElement('canvas');"
        "c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d');"
        "g.drawImage(i, 0, 0); return Array.from(g.getImageData(arguments[1], arguments[2], 1, 1).data);"
    )
    return list(browser.execute_script(script, css, x, y))


def test_the_map_view_shows_the_predicted_and_reference_maps_with_legend_and_toggles(files: dict[str, Path]) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bigearth.shards.patches import PatchStore
    from browser import chromium, console_errors, screenshot

    with served(files, segmentation=True) as url, chromium() as b:
        wait = WebDriverWait(b, 60)
        shown = lambda css: b.find_element(By.CSS_SELECTOR, css).is_displayed()  # noqa: E731
        natural = lambda css: b.execute_script(f"return document.querySelector('{css}').naturalWidth")  # noqa: E731
        b.get(f"{url}/")
        wait.until(lambda _: b.find_elements(By.CSS_SELECTOR, "#grid .card"))
        card = b.find_element(By.CSS_SELECTOR, "#grid .card")
        pid = card.get_attribute("data-patch")
        card.click()
        # the predicted map over the quicklook, the reference map beside it, the legend
        wait.until(lambda _: shown("#view-seg"))
        wait.until(lambda _: natural("#seg-overlay") == 120 and natural("#seg-reference") == 120)
        wait.until(lambda _: natural("#seg-base") == 240)
        assert shown("#seg-overlay") and shown("#seg-reference")
        legend = b.find_elements(By.CSS_SELECTOR, "#seg-legend li")
        assert [li.text.split(":")[0] for li in legend] == list(BEN19)
        assert [li.get_attribute("data-colour") for li in legend] == [
            "#{:02x}{:02x}{:02x}".format(*c) for c in BEN19_COLOURS
        ]
        answer = httpx.post(f"{url}/v1/segment", json={"patch_id": pid}, timeout=60).json()
        present = [n for n, s in answer["shares"].items() if s > 0]
        assert [li.text.split(":")[0] for li in legend if "absent" not in li.get_attribute("class")] == present
        assert "seg-tiny" in b.find_element(By.ID, "seg-model").text
        assert b.find_element(By.ID, "seg-overlay").get_attribute("src") == f"data:image/png;base64,{answer['png']}"
        # the pixels the browser shows are the archive's map in the classes' colours (no class: transparent)
        value = PatchStore(str(files["shards"])).row(pid, ["reference_map"]).column(0)[0].as_py()
        targets = reference_targets(np.frombuffer(value, np.uint16).reshape(120, 120))
        for y, x in ((0, 0), (60, 60), (119, 7), (33, 101)):
            want = [0, 0, 0, 0] if targets[y, x] == IGNORE_INDEX else [*BEN19_COLOURS[targets[y, x]], 255]
            assert _pixel(b, "#seg-reference", x, y) == want, (x, y)
        predicted = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["png"]))))  # palette indices
        for y, x in ((0, 0), (60, 60), (119, 119)):
            assert _pixel(b, "#seg-overlay", x, y) == [*BEN19_COLOURS[predicted[y, x]], 255], (x, y)
        screenshot(b, "map-view-1-prediction")
        # the toggles: the reference over the quicklook, then nothing; the opacity slider
        reference_src = b.find_element(By.ID, "seg-reference").get_attribute("src")
        b.find_element(By.CSS_SELECTOR, 'input[name="seg-layer"][value="reference"]').click()
        wait.until(lambda _: b.find_element(By.ID, "seg-overlay").get_attribute("src") == reference_src)
        assert "reference map over" in b.find_element(By.ID, "seg-overlay-caption").text
        screenshot(b, "map-view-2-reference")
        b.find_element(By.CSS_SELECTOR, 'input[name="seg-layer"][value="none"]').click()
        wait.until(lambda _: not shown("#seg-overlay"))
        assert b.find_element(By.ID, "seg-overlay-caption").text == "The quicklook alone."
        b.find_element(By.CSS_SELECTOR, 'input[name="seg-layer"][value="prediction"]').click()
        wait.until(lambda _: shown("#seg-overlay"))
        assert b.find_element(By.ID, "seg-overlay").value_of_css_property("opacity") == "0.6"
        b.execute_script(
            "const s = document.getElementById('seg-opacity'); s.value = 25;"
            "s.dispatchEvent(new Event('input', {bubbles: true}));"
        )
        assert b.find_element(By.ID, "seg-overlay").value_of_css_property("opacity") == "0.25"
        assert console_errors(b) == []

    # without a segmentation model the page hides the map view and asks for no map
    with served(files, segmentation=False) as url, chromium() as b:
        wait = WebDriverWait(b, 60)
        b.get(f"{url}/#patch={pid}")
        wait.until(lambda _: len(b.find_elements(By.CSS_SELECTOR, "#view-probs tbody tr")) == 19)
        assert not b.find_element(By.ID, "view-seg").is_displayed()
        screenshot(b, "map-view-3-no-model")
        assert console_errors(b) == []
