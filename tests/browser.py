"""Headless-Chromium checks of what a user sees: the MLflow UI on a tracking database, and report.html.

Uses Selenium with Debian's ``chromium`` and ``chromium-driver`` (``make install`` installs them where it
can). :func:`browser_unavailable` says why they cannot run, and :data:`requires_browser` skips a test
with that reason. The reusable entry points:

- :func:`mlflow_ui_page` / :func:`mlflow_ui_page_text`: start ``mlflow ui`` on a sqlite database, open
  the experiment as a user who chose "Model training" in the sidebar, return what is rendered;
- :func:`check_mlflow_ui_shows_runs`: the assertion the end-to-end test makes on its own ``mlflow.db``
  (:func:`mlflow_ui` + :func:`experiment_page` + :func:`assert_shows_runs`, usable apart);
- :func:`html_report_check`: open a report.html from ``file://``, return its tables, images, console
  errors and a screenshot's pixel variance.
- :func:`static_page_check`: open a page of a static site (the MkDocs site of ``make docs``) from
  ``file://``, return its headings, tables, console errors and anything it fetched from the network.

MLflow 3 keeps the sidebar's GenAI / "Model training" choice per browser in localStorage (key
``mlflow.workflowType`` stored as ``mlflow.workflowType_v1``, a JSON string); its default ``genai`` opens
every experiment on the GenAI overview, whatever the experiment's ``mlflow.experimentKind`` tag says
(MLflow 3.17: the kind the UI uses comes from that choice; the tag is only checked through the API).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WORKFLOW_STORAGE_KEY = "mlflow.workflowType_v1"  # useLocalStorage({key: "mlflow.workflowType", version: 1})
MODEL_TRAINING = "machine_learning"  # the sidebar's "Model training"; the other value is "genai"
RUNS_FOOTER = re.compile(r"^\d+ matching runs?$", re.MULTILINE)  # under the rendered runs table
UI_START_TIMEOUT_S = 90.0  # `mlflow ui` answers /health after about 10-25 s on 2 busy cores
PAGE_TIMEOUT_S = 60.0


def chromium_binaries() -> tuple[str, str] | None:
    """(browser, chromedriver) executables on PATH, or None when either is missing."""
    browser = next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def browser_unavailable() -> str | None:
    """Why the browser checks cannot run here (one line), or None when they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make install)"
    if chromium_binaries() is None:
        return "no chromium + chromedriver on PATH (apt-get install chromium chromium-driver)"
    return None


requires_browser = pytest.mark.skipif(browser_unavailable() is not None, reason=str(browser_unavailable()))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1000, console_log: bool = False) -> Iterator[Any]:
    """A Selenium Chrome driver on a headless Chromium with a throw-away profile; quits it afterwards.

    ``console_log`` keeps the page's console messages for ``driver.get_log("browser")``.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = chromium_binaries()
    if found is None:
        raise RuntimeError(browser_unavailable())
    browser, driver_path = found
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for argument in (
            "--headless=new",
            "--no-sandbox",  # root in containers has no user namespaces for the sandbox
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
        ):
            options.add_argument(argument)
        if console_log:
            options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            driver.set_page_load_timeout(PAGE_TIMEOUT_S)
            yield driver
        finally:
            driver.quit()


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it forks uvicorn workers), SIGKILL it if still alive."""
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def mlflow_ui(db_path: Path, timeout_s: float = UI_START_TIMEOUT_S) -> Iterator[str]:
    """Run ``mlflow ui`` on the sqlite database ``db_path`` (127.0.0.1, a free port); yields its base URL.

    Waits until /health answers, then stops the server and its workers on exit. Fails with the end of
    the server's log when it does not come up in ``timeout_s``.
    """
    db_path = Path(db_path).resolve()
    if not db_path.is_file():
        raise FileNotFoundError(f"no MLflow database at {db_path}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{db_path}"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    with urllib.request.urlopen(base + "/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    state = f"exited with {process.returncode}" if process.poll() is not None else "timed out"
                    raise RuntimeError(f"mlflow ui on {db_path} {state} before /health answered:\n{tail}")
                time.sleep(0.3)
            yield base
        finally:
            _stop(process)


def _api(base: str, path: str, **query: str) -> dict:
    url = f"{base}/api/2.0/mlflow/{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _experiment(base: str, name: str | None) -> dict:
    """The experiment named ``name`` as the server reports it; None: the one experiment besides Default."""
    if name is not None:
        return _api(base, "experiments/get-by-name", experiment_name=name)["experiment"]
    found = _api(base, "experiments/search", max_results="100").get("experiments", [])
    mine = [e for e in found if e["name"] != "Default"]
    if len(mine) != 1:
        raise ValueError(f"expected one experiment besides Default, found {[e['name'] for e in mine]}")
    return mine[0]


@dataclass(frozen=True)
class UIPage:
    """What the browser shows for one experiment: the final URL, the rendered text, the experiment tags."""

    url: str
    text: str
    experiment_id: str
    experiment_tags: dict[str, str] = field(default_factory=dict)

    @property
    def view(self) -> str:
        """The experiment page's route ('runs', 'overview', ...) from the URL's fragment."""
        route = urllib.parse.urlsplit(self.url).fragment.split("?")[0].strip("/").split("/")
        return route[2] if len(route) > 2 and route[0] == "experiments" else ""

    @property
    def shows_runs_table(self) -> bool:
        """The runs view with its table rendered (its footer 'N matching runs' is on the page)."""
        return self.view == "runs" and RUNS_FOOTER.search(self.text) is not None

    @property
    def run_count(self) -> int | None:
        """N of the table's 'N matching runs' footer, None without one."""
        found = RUNS_FOOTER.search(self.text)
        return int(found.group(0).split()[0]) if found else None

    @property
    def lines(self) -> set[str]:
        """Every rendered line, stripped: table cells are lines of their own in ``innerText``."""
        return {line.strip() for line in self.text.splitlines() if line.strip()}


def _body_text(driver: Any) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''") or ""


def experiment_page(
    base: str,
    experiment: str | None = None,
    workflow_type: str | None = MODEL_TRAINING,
    expect: Sequence[str] = (),
    timeout_s: float = PAGE_TIMEOUT_S,
    screenshot: Path | None = None,
) -> UIPage:
    """Open ``experiment`` (default: the only one besides Default) on the MLflow server at ``base``.

    As a user would, in a fresh browser profile: load the experiment, store the sidebar choice
    ``workflow_type`` in localStorage and reload (None skips that step: a first-time visitor's view).
    Returns the page once the runs table shows every name in ``expect``, or, short of that, once the
    page has settled: unchanged for 2 s with a non-zero run count (the table first renders "0 matching
    runs" while it fetches), or for 5 s otherwise; at the latest after ``timeout_s``. The window is
    4000 px tall because the grid draws only the rows near the viewport: room for about 100 rows
    (tested with 22).
    """
    found = _experiment(base, experiment)
    experiment_id = found["experiment_id"]
    tags = {t["key"]: t["value"] for t in found.get("tags", [])}
    with headless_chromium(1600, 4000) as driver:
        driver.get(f"{base}/#/experiments/{experiment_id}")
        if workflow_type is not None:
            driver.execute_script(
                "window.localStorage.setItem(arguments[0], JSON.stringify(arguments[1]))",
                WORKFLOW_STORAGE_KEY,
                workflow_type,
            )
            driver.refresh()
        deadline = time.monotonic() + timeout_s
        last, stable_since = "", time.monotonic()
        while True:
            page = UIPage(driver.current_url, _body_text(driver), experiment_id, tags)
            now = time.monotonic()
            if page.text != last:
                last, stable_since = page.text, now
            if page.shows_runs_table and expect and set(expect) <= page.lines:
                break
            settle_s = 2.0 if page.shows_runs_table and page.run_count else 5.0
            if (page.text and now - stable_since >= settle_s) or now > deadline:
                break
            time.sleep(0.5)
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
        return page


def mlflow_ui_page(
    db_path: Path,
    experiment: str | None = None,
    workflow_type: str | None = MODEL_TRAINING,
    screenshot: Path | None = None,
) -> UIPage:
    """Start ``mlflow ui`` on ``db_path`` and open the experiment (see :func:`experiment_page`)."""
    with mlflow_ui(db_path) as base:
        return experiment_page(base, experiment, workflow_type, screenshot=screenshot)


def mlflow_ui_page_text(
    db_path: Path, experiment: str | None = None, workflow_type: str | None = MODEL_TRAINING
) -> str:
    """The rendered text of the experiment's page in the MLflow UI (see :func:`experiment_page`)."""
    return mlflow_ui_page(db_path, experiment, workflow_type).text


def assert_shows_runs(page: UIPage, stage_names: Sequence[str]) -> None:
    """Assert ``page`` is the runs table of a model-training experiment with a run per stage name.

    The experiment must carry the tag the pipeline sets (cecl.tracking.EXPERIMENT_TAGS), the page must
    be the runs view with its table rendered (not the GenAI overview), and every name must be a cell of
    its own (``pretrain@bm-ce-0`` is not found inside ``pretrain@bm-ce-01``).
    """
    from cecl.tracking import EXPERIMENT_TAGS

    for key, value in EXPERIMENT_TAGS.items():
        assert page.experiment_tags.get(key) == value, (
            f"experiment tag {key}={value!r} missing: the experiment's tags are {page.experiment_tags}"
        )
    assert page.shows_runs_table, f"not the runs table (view {page.view!r}, {page.url}):\n{page.text[:1500]}"
    missing = [name for name in stage_names if name not in page.lines]
    assert not missing, f"runs missing from the MLflow UI's runs table: {missing}\n{page.text[:3000]}"


def check_mlflow_ui_shows_runs(
    db_path: Path, stage_names: Sequence[str], experiment: str | None = None
) -> UIPage:
    """Start the MLflow UI on ``db_path`` and :func:`assert_shows_runs` for ``experiment``; returns the page.

    For the end-to-end test: ``check_mlflow_ui_shows_runs(root / "mlflow.db", stage_names, "cecl")``
    (about 20-40 s on 2 cores: the server's start-up dominates). Raises AssertionError naming what is
    missing.
    """
    with mlflow_ui(db_path) as base:
        page = experiment_page(base, experiment, expect=stage_names)
    assert_shows_runs(page, stage_names)
    return page


@dataclass(frozen=True)
class ReportView:
    """What headless Chromium rendered for an HTML report."""

    title: str
    tables: list[list[list[str]]]  # per table, per row (header row first), the cells' text
    images: list[dict[str, Any]]  # per <img>: src up to its first ',', natural width and height, alt
    console_errors: list[str]
    screenshot_png: bytes
    pixel_variance: float  # grey-level variance of the full-page screenshot: 0 for a blank page


def _pixel_variance(png: bytes) -> float:
    from PIL import Image, ImageStat

    with Image.open(io.BytesIO(png)) as image:
        return float(ImageStat.Stat(image.convert("L")).var[0])


def _load(driver: Any, url: str) -> None:
    """Open ``url`` and wait until the document has loaded (at most PAGE_TIMEOUT_S)."""
    driver.get(url)
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while driver.execute_script("return document.readyState") != "complete":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not finish loading")
        time.sleep(0.2)


def _tables(driver: Any, selector: str) -> list[list[list[str]]]:
    """Per table matching ``selector``, per row, the cells' text."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(t => Array.from(t.rows)"
        ".map(r => Array.from(r.cells).map(c => c.innerText.trim())))",
        selector,
    )


def html_report_check(path: Path, width: int = 1280, screenshot: Path | None = None) -> ReportView:
    """Open ``path`` over ``file://`` in headless Chromium (no server, no network); return what it shows.

    The screenshot covers the whole page (the window is grown to the document's height, at most 16 000
    px). ``console_errors`` holds the console's SEVERE messages, e.g. a resource the page's
    Content-Security-Policy blocked or an image that failed to load.
    """
    url = Path(path).resolve().as_uri()
    with headless_chromium(width, 900, console_log=True) as driver:
        _load(driver, url)
        tables = _tables(driver, "table")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => ({prefix: i.src.split(',')[0],"
            " width: i.naturalWidth, height: i.naturalHeight, alt: i.alt, complete: i.complete}))"
        )
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(width, min(max(height, 600), 16000))
        png = driver.get_screenshot_as_png()
        if screenshot is not None:
            Path(screenshot).write_bytes(png)
        errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        return ReportView(driver.title, tables, images, errors, png, _pixel_variance(png))


@dataclass(frozen=True)
class StaticPage:
    """What headless Chromium rendered for a page of a static site opened from disk."""

    url: str
    title: str
    headings: list[str]  # h1-h3 text, in page order
    tables: list[list[list[str]]]  # per table, per row, the cells' text
    console_errors: list[str]
    remote_resources: list[str]  # scripts, stylesheets, images and fonts the page loaded from http(s)


def static_page_check(path: Path, width: int = 1280) -> StaticPage:
    """Open ``path`` over ``file://`` (no server) and return its headings, tables, console errors and every
    resource it fetched from the network (Resource Timing), e.g. for the MkDocs site ``make docs`` builds."""
    url = Path(path).resolve().as_uri()
    with headless_chromium(width, 900, console_log=True) as driver:
        _load(driver, url)
        headings = driver.execute_script(
            "return Array.from(document.querySelectorAll('article h1, article h2, article h3'))"
            ".map(h => h.innerText.replace(/\\s*¶\\s*$/, '').trim())"
        )
        tables = _tables(driver, "article table")
        remote = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".filter(n => n.startsWith('http:') || n.startsWith('https:'))"
        )
        errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        return StaticPage(driver.current_url, driver.title, headings, tables, errors, remote)


def site_search(path: Path, query: str, width: int = 1280) -> list[tuple[str, str]]:
    """Open a page of the MkDocs site over ``file://``, type ``query`` into material's search box as a user
    would, and return the results shown: (title, link) per result, once the search worker answered."""
    from selenium.webdriver.common.by import By

    url = Path(path).resolve().as_uri()
    with headless_chromium(width, 900) as driver:
        _load(driver, url)
        box = driver.find_element(By.CSS_SELECTOR, "input.md-search__input")
        box.click()  # the header's search box (shown as a box at this width, not only an icon)
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        results: list[tuple[str, str]] = []
        while time.monotonic() < deadline and not results:
            box.clear()
            box.send_keys(query)  # the worker may still be indexing: type again until it answers
            time.sleep(1.0)
            results = driver.execute_script(
                "return Array.from(document.querySelectorAll('.md-search-result__item a'))"
                ".map(a => [(a.querySelector('h1, h2') || a).innerText.trim(), a.href])"
            )
        return [(title, link) for title, link in results]


@dataclass
class CellView:
    """A table cell as rendered: its text and whether it lies inside the window (no scrolling needed)."""

    text: str
    left: float
    right: float
    window_width: int

    @property
    def inside_window(self) -> bool:
        return self.left >= 0 and self.right <= self.window_width


def table_cells(path: Path, header: str, width: int = 1280) -> list[CellView]:
    """Open ``path`` over ``file://`` at ``width`` px and return the cells of the column headed ``header``
    in the first table that has one, with their rendered horizontal extent."""
    url = Path(path).resolve().as_uri()
    with headless_chromium(width, 900) as driver:
        _load(driver, url)
        found = driver.execute_script(
            """
            for (const t of document.querySelectorAll('article table')) {
              const head = Array.from(t.rows[0].cells).map(c => c.innerText.trim());
              const i = head.indexOf(arguments[0]);
              if (i < 0) continue;
              return Array.from(t.rows).slice(1).map(r => {
                const b = r.cells[i].getBoundingClientRect();
                return [r.cells[i].innerText.trim(), b.left, b.right, window.innerWidth];
              });
            }
            return [];
            """,
            header,
        )
        return [CellView(text, left, right, int(window)) for text, left, right, window in found]
