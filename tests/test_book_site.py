"""The rendered tiny book, tested the way a reader uses it: every page in headless Chromium.

The tiny-profile book (``tiny_book`` in conftest: ``xrg book run --profile tiny`` and
``xrg book build``) is served from ``_build/html`` on localhost and every page is loaded in
Debian's ``chromium`` through Playwright, with every request that leaves localhost refused,
as if the reader were offline. Checked on every page: it loads with HTTP 200 and no
JavaScript error; no request fails; every image is decoded; every internal link points to a
file that exists (and to an anchor that exists); no cell shows an error or a traceback;
every glued value is filled in. The report explorer's widgets render from their saved state
with the widget manager served by the book itself. Screenshots of the intro and results
pages are kept in ``test-artifacts/`` (or ``$XRG_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("XRG_TEST_ARTIFACTS") or ROOT / "test-artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GLUE_ROLE = re.compile(r"\{glue(?::text)?\}`")

pytestmark = pytest.mark.slow


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def site(tiny_book):
    """``(base_url, html_dir)`` of the tiny book served on localhost."""
    html_dir = Path(tiny_book["html"])
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", html_dir
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium on this machine: `apt-get install chromium` (Debian) to run the browser test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


def _pages(html_dir: Path) -> list[str]:
    """Every HTML page of the book, relative to the site root (not Sphinx's _static etc.)."""
    return sorted(
        path.relative_to(html_dir).as_posix()
        for path in html_dir.rglob("*.html")
        if not path.relative_to(html_dir).parts[0].startswith("_")
    )


_PAGE_FACTS = """() => ({
  title: document.title,
  text: document.body ? document.body.innerText : "",
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id)
        .concat(Array.from(document.querySelectorAll('a[name]')).map(a => a.name)),
  broken_images: Array.from(document.images)
        .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
  num_images: document.images.length,
  error_outputs: document.querySelectorAll('.cell_output .traceback, .output.traceback, .output.error').length,
  pasted: Array.from(document.querySelectorAll('.pasted-text, .pasted-inline'))
        .map(e => e.textContent.trim()),
  widget_views: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
  widget_state: document.querySelectorAll('script[type="application/vnd.jupyter.widget-state+json"]').length,
  rendered_widgets: document.querySelectorAll('.jupyter-widgets, .widget-image, .jupyter-widget-image').length,
})"""


def _offline(base: str, refused: list[str]):
    """A route handler that serves only the site itself and records what else was asked for.

    (Playwright passes ``(route, request)`` to a handler that takes two arguments, so the
    list is bound by this closure, not by a default argument.)
    """

    def handle(route):
        url = route.request.url
        if url.startswith(base) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    return handle


@pytest.fixture(scope="module")
def visits(site, browser):
    """Every page loaded once in Chromium: what it showed and what went wrong."""
    base, html_dir = site
    results = {}
    for page_path in _pages(html_dir):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        problems: dict[str, list[str]] = {"external": [], "failed": [], "http": [], "js": []}

        context.route("**/*", _offline(base, problems["external"]))
        page = context.new_page()
        page.on("pageerror", lambda error, problems=problems: problems["js"].append(str(error)))
        page.on(
            "response",
            lambda response, problems=problems: (
                response.status >= 400 and problems["http"].append(f"{response.status} {response.url}")
            ),
        )
        page.on(
            "requestfailed",
            lambda request, problems=problems: (
                request.url.startswith(base) and problems["failed"].append(f"{request.url}: {request.failure}")
            ),
        )
        response = page.goto(base + page_path, wait_until="load")
        try:  # scripts that load more (MathJax, the widget manager) settle
            page.wait_for_load_state("networkidle", timeout=10_000)
        except Exception:  # noqa: BLE001 - a page that never settles still gets checked
            pass
        facts = page.evaluate(_PAGE_FACTS)
        if facts["widget_views"]:
            try:  # the widget manager renders after load; give it time
                page.wait_for_selector(".jupyter-widgets, .widget-image, .jupyter-widget-image", timeout=20_000)
            except Exception:  # noqa: BLE001 - reported by the widget test below
                pass
            try:  # the rendered widgets' images (blob: URLs) decode; on a busy machine that takes a while
                page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=20_000)
            except Exception:  # noqa: BLE001 - the ones still loading are reported as broken below
                pass
            facts = page.evaluate(_PAGE_FACTS)
        facts.update(problems, status=response.status if response else None, url=page.url)
        name = {"book/intro.html": "intro", "book/results.html": "results"}.get(page_path)
        if name:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            facts["screenshot"] = ARTIFACTS / f"{name}.png"
        results[page_path] = facts
        context.close()
    return results


def test_the_book_has_its_chapters(visits):
    expected = {"book/intro.html", "book/results.html"} | {
        f"book/executed/{path.stem}.html" for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.py")
    }
    assert expected <= set(visits), f"pages missing from the site: {sorted(expected - set(visits))}"


def test_every_page_loads_without_errors(visits):
    bad = {
        page: {key: facts[key] for key in ("status", "http", "failed", "js") if facts[key] not in ([], 200)}
        for page, facts in visits.items()
    }
    bad = {page: problems for page, problems in bad.items() if problems}
    assert not bad, f"pages with load errors: {bad}"


def test_the_book_reads_offline(visits):
    external = {page: facts["external"] for page, facts in visits.items() if facts["external"]}
    assert not external, f"pages that fetch from outside the site (they break offline): {external}"


def test_no_missing_images(visits):
    broken = {page: facts["broken_images"] for page, facts in visits.items() if facts["broken_images"]}
    assert not broken, f"images that did not load: {broken}"
    assert visits["book/executed/01_data.html"]["num_images"] > 0  # the figures are there at all


def test_no_broken_internal_links(visits, site):
    base, html_dir = site
    ids = {page: set(facts["ids"]) for page, facts in visits.items()}
    broken = []
    for page, facts in visits.items():
        for link in facts["links"]:
            if not link.startswith(base):
                continue
            parts = urlsplit(link)
            target = unquote(parts.path[len(urlsplit(base).path) :]) or "index.html"
            if target.endswith("/"):
                target += "index.html"
            if not (html_dir / target).is_file():
                broken.append(f"{page} -> {link} (no file)")
            elif parts.fragment and target.endswith(".html") and target in ids and parts.fragment not in ids[target]:
                broken.append(f"{page} -> {link} (no anchor #{parts.fragment})")
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_no_error_outputs_or_tracebacks(visits):
    bad = {page: facts["error_outputs"] for page, facts in visits.items() if facts["error_outputs"]}
    assert not bad, f"cells with error outputs: {bad}"
    traced = [page for page, facts in visits.items() if "Traceback (most recent call last)" in facts["text"]]
    assert not traced, f"pages showing a traceback: {traced}"


def test_every_glued_value_is_rendered(visits):
    for page in ("book/intro.html", "book/results.html"):
        source = (ROOT / page).with_suffix(".md").read_text(encoding="utf-8")
        roles = len(GLUE_ROLE.findall(source))
        pasted = visits[page]["pasted"]
        assert roles > 0 and len(pasted) >= roles, f"{page}: {roles} glue roles, {len(pasted)} values rendered"
        assert all(value for value in pasted), f"{page}: an empty glued value"
    for page, facts in visits.items():
        unresolved = re.findall(r"\S*\.ipynb::\S+|\{glue[^}]*\}", facts["text"])
        assert not unresolved, f"{page} shows unresolved glue: {unresolved[:5]}"


def test_the_intro_shows_the_run_table(visits):
    text = visits["book/intro.html"]["text"]
    assert "The run this book was built from" in text
    for notebook in ("01_data", "04_xraygan", "05_evaluation"):
        assert notebook in text, f"the intro's run table has no row for {notebook}"


def test_the_report_explorer_widgets_render_from_saved_state(visits):
    facts = visits["book/executed/09_report_explorer.html"]
    assert facts["widget_state"] == 1, "the explorer page carries no saved widget state"
    assert facts["widget_views"] >= 1
    assert facts["rendered_widgets"] > 0, "the widget manager did not render the saved widgets"


def test_screenshots_are_kept(visits):
    for page in ("book/intro.html", "book/results.html"):
        shot = visits[page]["screenshot"]
        assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {page}"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
