"""A real headless Chromium for page tests, driven by selenium, that never uses the
network: Debian's ``chromium`` and ``chromium-driver`` packages (``/usr/bin/chromium``,
``/usr/bin/chromedriver``), given to selenium explicitly so that selenium manager never
looks for (or downloads) a browser or a driver."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Browser and driver, found on PATH or at Debian's paths.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Flags for a headless browser that stays off the network and out of ~/.config.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
)


def missing() -> str | None:
    """Why no browser test can run here (a sentence), or None when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not Path(path).is_file():
            return (
                f"{name} not found at {path} (apt-get install chromium chromium-driver)"
            )
    return None


@contextmanager
def headless_chromium(
    download_dir: Path | None = None, size: tuple[int, int] = (1400, 1000)
) -> Iterator[Any]:
    """A selenium ``WebDriver`` of a fresh headless Chromium (own profile folder, removed
    afterwards); downloads go to ``download_dir`` without asking, and the console is
    kept for :func:`severe_messages`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="cryodiscovery-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.add_argument(f"--window-size={size[0]},{size[1]}")
        # The console (script errors among it) for :func:`severe_messages`.
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        if download_dir is not None:
            options.add_experimental_option(
                "prefs",
                {
                    "download.default_directory": str(download_dir),
                    "download.prompt_for_download": False,
                },
            )
        driver = webdriver.Chrome(
            service=Service(executable_path=CHROMEDRIVER), options=options
        )
        try:
            if download_dir is not None:
                driver.execute_cdp_cmd(
                    "Browser.setDownloadBehavior",
                    {"behavior": "allow", "downloadPath": str(download_dir)},
                )
            yield driver
        finally:
            driver.quit()


def severe_messages(driver: Any) -> list[str]:
    """The console's ``SEVERE`` entries (uncaught script errors, failed loads) since the
    last call, as text."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


#: A script that makes ``localStorage`` and ``sessionStorage`` throw, as some browsers'
#: ``file://`` pages (or privacy settings) do.
STORAGE_REFUSED = """
for (const name of ["localStorage", "sessionStorage"]) {
  Object.defineProperty(window, name, {
    configurable: true,
    get() { throw new DOMException("storage refused", "SecurityError"); },
  });
}
"""


def run_before_pages(driver: Any, script: str) -> None:
    """Run ``script`` in every page the driver opens from now on, before the page's
    own scripts (Chromium's ``Page.addScriptToEvaluateOnNewDocument``)."""
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": script})


def save_screenshot(driver: Any, path: Path) -> Path:
    """The window's screenshot as ``path`` (a PNG), copied into the folder that
    ``CRYODISCOVERY_ARTEFACTS`` names, when set."""
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"no screenshot for {path}")
    artefacts = os.environ.get("CRYODISCOVERY_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artefacts) / path.name)
    return path
