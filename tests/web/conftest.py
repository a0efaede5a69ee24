"""The web playground in a real browser: Playwright driving Debian's chromium (`make browser`
installs it: apt-get install chromium) against a live server on tiny random models.

Screenshots go to each test's tmp dir. POLYHEAD_WEB_SCREENSHOTS=1 also runs test_screenshots.py,
which serves the real default model (`--tasks default`) and writes each view to docs/img/web-*.png
for the README."""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import serve_in_thread
from tests.server.task_fixtures import bert, manifest_dir, running_task_server  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
WRITES_DOC_SCREENSHOTS = os.environ.get("POLYHEAD_WEB_SCREENSHOTS") == "1"
TIMEOUT_MS = 15_000  # per wait: generous for a shared 2-core machine, still fails fast on a broken page


def chromium_path() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="package")  # closed after tests/web: Playwright's sync API keeps an event loop
def browser():  # running on this thread while open, and a later test's asyncio.run would fail
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium on PATH: install it with `apt-get install -y chromium` (make browser)")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI and these machines run as root, where chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture(scope="module")
def task_server(manifest_dir, tiny_llama):  # noqa: F811 (the fixture imported above)
    with running_task_server(manifest_dir[1], tiny_llama[0]) as (url, app):
        yield url, app


def screenshot(page, tmp_path: Path, name: str, for_docs: bool = False) -> Path:
    """Save the page as tmp_path/name.png; with for_docs, under POLYHEAD_WEB_SCREENSHOTS=1, also as
    docs/img/web-name.png."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    if for_docs and WRITES_DOC_SCREENSHOTS:
        shutil.copyfile(path, ROOT / "docs" / "img" / f"web-{name}.png")
    return path


def open_page(page, url: str):
    """Load the playground and wait until it has read what the server serves."""
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    return page


@contextmanager
def served_under_prefix(app, prefix: str):
    """Serve `app` the way a reverse proxy with uvicorn's --root-path does: the app sees the prefix as
    its root_path and in front of every path. Yields the prefixed base URL."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount(prefix, app=app)], lifespan=lambda _: app.router.lifespan_context(app))
    with serve_in_thread(outer, start_timeout_s=60) as url:
        yield url + prefix
