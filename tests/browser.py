"""Headless Chromium for the web page's tests: Debian's `chromium` and `chromium-driver` driven by Selenium.

`make test` installs both when they are missing (Makefile `browser`). Screenshots go to `runs/test-artifacts/web/`
(or `$BIGEARTH_ARTIFACTS/web/`), kept after the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers import REPO

ARTIFACTS = Path(os.environ.get("BIGEARTH_ARTIFACTS", REPO / "runs" / "test-artifacts")) / "web"
# As this machine's closed network needs: no background connections to Google's hosts, no GPU, no sandbox (root).
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
)


def binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        raise RuntimeError(
            "the web page tests need Debian's chromium and chromium-driver: `make test` installs them "
            "(apt-get install chromium chromium-driver)"
        )
    return chromium, driver


@contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = binaries()
    profile = tempfile.mkdtemp(prefix="bigearth-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(browser: Any, allowed: tuple[str, ...] = ()) -> list[str]:
    """The browser console's errors since the last call (each call drains the log), less those containing one of
    `allowed`."""
    logs = browser.get_log("browser")
    return [e["message"] for e in logs if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def screenshot(browser: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path
