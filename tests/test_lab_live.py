"""Both explorers driven live in JupyterLab, the way a student uses them: Run All, then click.

The report explorer (``09_report_explorer``) and the PGGAN latent explorer (``07_pggan_latent``)
are copied into a temporary folder with their parameters pointed at the tiny book's data and
runs (``tiny_book`` in conftest: everything is trained already, so the notebooks only load it),
and JupyterLab (``make lab``'s server) is started on 127.0.0.1 with a token and its config,
data and runtime folders inside the test's folder, so no user setting takes part. Debian's
``chromium`` opens each notebook through Playwright, refusing every request that leaves the
server, waits for the kernel, runs all cells from the Run menu and waits for the widgets:

- the report explorer: a finding's edit button (negate, milder, ...) regenerates the pair, so
  the first image (XRayGAN's frontal view) changes;
- the latent explorer: the first direction slider, moved with the keyboard, changes the image
  and both classifiers' table of probabilities.

No cell may end in an error, show a traceback or an error on stderr, and no kernel message
may be an error (a widget callback's exception is one, and never reaches a cell); the
server's log (which the kernels write to) may show no traceback. Screenshots of both apps
go to ``test-artifacts/`` (or ``$XRG_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("XRG_TEST_ARTIFACTS") or ROOT / "test-artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: Seconds for JupyterLab to answer /api/status, for a notebook's page and its kernel to be
#: ready, for Run All of one notebook, and for one click's answer. A kernel's start-up
#: (importing torch) takes 30+ s on a busy 2-core machine; 07's Run All several minutes there.
SERVER_START_S = 180
KERNEL_READY_S = 240
RUN_ALL_S = 1200
RESPONSE_S = 240

#: The tiny book's folders each notebook reads (under ``tiny_book["runs"]``), by parameter name;
#: a name the notebook does not declare is left out (07 calls its PGGAN run ``pggan_dir``).
RUN_PARAMS = {
    "09_report_explorer": {"run_dir": "xraygan"},
    "07_pggan_latent": {"pggan_dir": "pggan", "search_dir": "search", "experiment_dir": "experiments"},
}
#: Cheaper than the tiny profile where the live test gains nothing from more.
CHEAP_PARAMS = {
    "09_report_explorer": {"max_choices": 20, "timing_repeats": 1},
    "07_pggan_latent": {
        "searches_per_class": 1,
        "search_steps": 3,
        "gan_train_per_class": 1,
        "gan_train_uncurated": 8,
        "gan_train_epochs": 1,
        "num_generated": 16,
        "timing_repeats": 1,
        "num_directions": 3,
        "min_group": 4,
        "min_evaluator_auroc": 0.0,
        "min_test_positives": 1,
    },
}
EDIT_LABEL = re.compile(r"^(negate|milder|more severe|make present|flip to \w+)$")

pytestmark = pytest.mark.slow


# -- the notebooks and the server --------------------------------------------------------------


def _parameterised(name: str, data_dir: Path, runs_dir: Path, out_dir: Path) -> Path:
    """``notebooks/NAME.ipynb`` with papermill's injected-parameters cell after its parameters cell."""
    import nbformat
    import papermill
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from xrg.profiles import load_profile

    source = ROOT / "notebooks" / f"{name}.ipynb"
    declared = set(papermill.inspect_notebook(str(source)))
    params = {"profile": "tiny", "seed": 0, "data_dir": str(data_dir)}
    params.update(load_profile("tiny").notebook_params(name))
    params.update(CHEAP_PARAMS[name])
    paths = {key: str(runs_dir / sub) for key, sub in RUN_PARAMS[name].items()}
    missing = sorted(set(paths) - declared)
    assert not missing, f"{source.name} declares no parameters {missing} (declared: {sorted(declared)})"
    params.update(paths)
    params = {key: value for key, value in params.items() if key in declared}
    for key, sub in RUN_PARAMS[name].items():
        assert (runs_dir / sub).is_dir(), f"the tiny book left no {runs_dir / sub} for {name}'s {key}"
    notebook = parameterize_notebook(load_notebook_node(str(source)), params)
    target = out_dir / source.name
    nbformat.write(notebook, target)
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET", timeout: float = 10) -> object:
    request = urllib.request.Request(base + path, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - 127.0.0.1 only
        body = response.read()
    return json.loads(body) if body else None


def _write_lab_settings(settings_dir: Path) -> None:
    """No news or update check (they would reach outside), every cell attached to the page."""
    settings = {
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    }
    for plugin, values in settings.items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium on this machine: `apt-get install chromium` (Debian) to run the JupyterLab test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def lab(tiny_book, tmp_path_factory: pytest.TempPathFactory):
    """JupyterLab on 127.0.0.1 over a folder holding both notebooks: ``(base_url, token, log_path)``."""
    home = tmp_path_factory.mktemp("lab")
    work = home / "notebooks"
    work.mkdir()
    for name in RUN_PARAMS:
        _parameterised(name, Path(tiny_book["data"]), Path(tiny_book["runs"]), work)
    jupyter = {name: home / name for name in ("config", "data", "runtime", "ipython", "settings", "workspaces")}
    for path in jupyter.values():
        path.mkdir()
    _write_lab_settings(jupyter["settings"])
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(jupyter["config"]),
        JUPYTER_DATA_DIR=str(jupyter["data"]),
        JUPYTER_RUNTIME_DIR=str(jupyter["runtime"]),
        IPYTHONDIR=str(jupyter["ipython"]),
        JUPYTERLAB_SETTINGS_DIR=str(jupyter["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(jupyter["workspaces"]),
        JUPYTER_PLATFORM_DIRS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
        # one BLAS/OpenMP thread per kernel, as `xrg book run` gives the tiny book (kernel_threads)
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    port, token = _free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}/"
    log_path = home / "jupyter-lab.log"
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
        "--ServerApp.terminals_enabled=False", "--LabApp.expose_app_in_browser=True",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if os.geteuid() == 0:  # CI and containers run as root, which jupyter_server refuses without this
        command.append("--allow-root")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with status {server.returncode} at start-up:\n{_tail(log_path)}")
            try:
                _api(base, token, "api/status", timeout=5)
                break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"jupyter lab did not answer {base}api/status within {SERVER_START_S} s:\n{_tail(log_path)}"
                )
            time.sleep(1)
        yield base, token, log_path
    finally:
        _shutdown_kernels(base, token)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)


def _shutdown_kernels(base: str, token: str) -> None:
    """Shut down every kernel the server started (each runs in a session of its own)."""
    try:
        kernels = _api(base, token, "api/kernels")
    except (OSError, urllib.error.URLError, ValueError):
        return
    for kernel in kernels or []:
        try:
            _api(base, token, f"api/kernels/{kernel['id']}", method="DELETE", timeout=60)
        except (OSError, urllib.error.URLError):
            pass


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _log_tracebacks(path: Path, start: int = 0) -> list[str]:
    """Tracebacks the server and its kernels wrote to the log after byte ``start`` (a widget
    callback's exception that ipykernel catches goes there)."""
    with open(path, "rb") as log:
        log.seek(start)
        text = log.read().decode("utf-8", "replace")
    return [block[:3000] for block in re.findall(r"Traceback \(most recent call last\):.*?(?=\n\S|\Z)", text, re.S)]


# -- the page ----------------------------------------------------------------------------------

_NOTEBOOK_STATE = """() => {
  const app = window.jupyterapp;
  if (!app) return {ready: false, why: "window.jupyterapp is missing (expose_app_in_browser)"};
  const panel = app.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return {ready: false, why: "no notebook is the current tab"};
  const kernel = panel.sessionContext.session ? panel.sessionContext.session.kernel : null;
  const cells = panel.content.widgets.filter(c => c.model.type === "code");
  const errors = [], running = [];
  let executed = 0;
  cells.forEach((cell, i) => {
    if (cell.model.executionCount) executed++;
    const prompt = cell.node.querySelector(".jp-InputPrompt");
    if (prompt && prompt.textContent.includes("*")) running.push(i);
    for (const out of cell.model.outputs.toJSON()) {
      if (out.output_type === "error")
        errors.push({cell: i, ename: out.ename, evalue: out.evalue, traceback: (out.traceback || []).join("\\n")});
    }
  });
  const stderr = Array.from(document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')).map(e => e.innerText);
  return {ready: true, path: panel.context.path, kernel: kernel ? kernel.status : null,
          connection: kernel ? kernel.connectionStatus : null, total: cells.length, executed, running, errors, stderr};
}"""

_IMAGE_DIGEST = """async (img) => {
  if (!img || !img.src) return null;
  const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let h = 2166136261;
  for (const b of bytes) { h ^= b; h = Math.imul(h, 16777619) >>> 0; }
  return bytes.length + ":" + h.toString(16);
}"""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Notebook:
    """One notebook open in JupyterLab, with what went wrong on the way."""

    def __init__(self, browser, base: str, token: str, log_path: Path, name: str) -> None:
        self.base, self.name, self.log_path = base, name, log_path
        self.log_start = log_path.stat().st_size  # this notebook's part of the server log starts here
        self.refused: list[str] = []
        self.page_errors: list[str] = []
        self.kernel_errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.context.route("**/*", self._offline)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("websocket", self._watch)
        # a workspace of its own: the tabs of an earlier notebook are not restored (nor their kernels started)
        url = f"{base}lab/workspaces/{name}/tree/{name}.ipynb?token={token}"
        self.page.goto(url, wait_until="domcontentloaded", timeout=120_000)

    def _offline(self, route) -> None:
        url = route.request.url
        if url.startswith(self.base) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.refused.append(url)
            route.abort()

    def _watch(self, ws) -> None:
        def frame(payload) -> None:
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
            if re.search(r'"msg_type":\s*"error"', text):
                match = re.search(r'"ename":\s*"([^"]*)".*?"evalue":\s*"((?:[^"\\]|\\.)*)"', text, re.S)
                self.kernel_errors.append(": ".join(match.groups()) if match else text[:2000])

        ws.on("framereceived", frame)

    def state(self) -> dict:
        return self.page.evaluate(_NOTEBOOK_STATE)

    def wait(self, what: str, predicate, timeout_s: float, poll_s: float = 1.0) -> dict:
        """Poll the notebook's state until ``predicate(state)``; fail naming ``what`` and the last state."""
        deadline = time.monotonic() + timeout_s
        state: dict = {}
        while True:
            try:
                state = self.state()
            except Exception as exc:  # noqa: BLE001 - a page still loading; keep the reason for the message
                state = {"ready": False, "why": f"{type(exc).__name__}: {exc}"}
            if state.get("ready") and predicate(state):
                return state
            if time.monotonic() > deadline:
                summary = {k: v for k, v in state.items() if k not in ("errors", "stderr")}
                pytest.fail(
                    f"{self.name}: waited {timeout_s:.0f} s for {what}; last state {summary}\n"
                    f"kernel errors: {self.kernel_errors}\nserver log:\n{_tail(self.log_path, 30)}"
                )
            self.page.wait_for_timeout(poll_s * 1000)

    def run_all(self) -> dict:
        """Wait for the kernel, Run → Run All Cells, wait until every code cell ran (or one failed)."""
        self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=KERNEL_READY_S * 1000)
        self.wait("the kernel to be idle", lambda s: s["kernel"] == "idle" and s["total"] > 0, KERNEL_READY_S)
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(r"^\s*Run\s*$")).click(timeout=30_000)
        self.page.locator(".lm-Menu-item .lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click(
            timeout=30_000
        )
        self.wait("a cell to start running after Run All", lambda s: s["running"] or s["executed"], 120, poll_s=0.25)
        state = self.wait(
            "Run All to finish (every code cell executed, the kernel idle)",
            lambda s: not s["running"] and s["kernel"] == "idle" and (s["executed"] == s["total"] or bool(s["errors"])),
            RUN_ALL_S,
            poll_s=2,
        )
        self.assert_no_errors("Run All")
        assert state["executed"] == state["total"], f"{self.name}: only {state['executed']} of {state['total']} ran"
        return state

    def settle(self, what: str) -> None:
        """Wait until the kernel is idle again after a widget interaction."""
        self.wait(f"the kernel to finish {what}", lambda s: s["kernel"] == "idle" and not s["running"], RESPONSE_S)
        self.page.wait_for_timeout(500)  # the last update messages reach the widgets

    def assert_no_errors(self, when: str) -> None:
        state = self.state()
        errors = [
            f"cell {e['cell']}: {e['ename']}: {e['evalue']}\n{_ANSI.sub('', e['traceback'])}" for e in state["errors"]
        ]
        assert not errors, f"{self.name}: error output after {when}:\n" + "\n\n".join(errors)
        bad_stderr = [text for text in state["stderr"] if "Traceback" in text or "Error" in text]
        assert not bad_stderr, f"{self.name}: stderr with an error after {when}:\n" + "\n---\n".join(bad_stderr)
        assert not self.kernel_errors, f"{self.name}: the kernel reported errors after {when}: {self.kernel_errors}"
        tracebacks = _log_tracebacks(self.log_path, self.log_start)
        assert not tracebacks, f"{self.name}: tracebacks in the server/kernel log after {when}:\n" + "\n".join(
            tracebacks
        )
        assert not self.page_errors, f"{self.name}: JavaScript errors after {when}: {self.page_errors}"
        assert not self.refused, f"{self.name}: requests that leave the server were refused: {self.refused}"

    def image(self, handle) -> dict:
        return {"src": handle.get_attribute("src"), "digest": self.page.evaluate(_IMAGE_DIGEST, handle)}

    def screenshot(self, element) -> Path:
        element.scroll_into_view_if_needed(timeout=10_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"lab-{self.name}.png"
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        self.context.close()


def _wait_until(page, what: str, predicate, timeout_s: float, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s:.0f} s for {what}")
        page.wait_for_timeout(poll_s * 1000)


@pytest.fixture
def notebook(browser, lab):
    opened: list[Notebook] = []

    def open_notebook(name: str) -> Notebook:
        opened.append(Notebook(browser, *lab, name))
        return opened[-1]

    yield open_notebook
    for nb in opened:
        nb.close()
    _shutdown_kernels(lab[0], lab[1])  # the next notebook gets both cores


# -- the tests ---------------------------------------------------------------------------------


def _explorer_status(app) -> str:
    """The report explorer's status line ("applied negate ... in 0.11 s ...", "working…", "could not ...")."""
    for text in app.locator(".widget-html").all_inner_texts():
        if text.strip().startswith(("applied ", "generated ", "working", "could not", "Pick or type")):
            return text.strip()
    return ""


def test_report_explorer_answers_an_edit_live_in_lab(notebook):
    nb = notebook("09_report_explorer")
    nb.run_all()
    page = nb.page
    page.wait_for_selector(".jp-OutputArea-output .jupyter-widgets img.widget-image", timeout=RESPONSE_S * 1000)
    images = page.locator(".jp-OutputArea-output img.widget-image")
    _wait_until(page, "the explorer's four images", lambda: images.count() >= 4, RESPONSE_S)
    app = page.locator(".jp-OutputArea-output .widget-vbox", has=page.locator("img.widget-image")).first
    before = [nb.image(images.nth(i).element_handle()) for i in range(4)]
    assert all(b["src"] for b in before), f"an explorer image has no picture after Run All: {before}"

    edits = app.locator("button.jupyter-button", has_text=EDIT_LABEL)
    _wait_until(page, "an edit button (negate, milder, ...)", lambda: edits.count() > 0, RESPONSE_S)
    enabled = [i for i in range(edits.count()) if edits.nth(i).is_enabled()]
    assert enabled, "every edit button is disabled"
    button = edits.nth(enabled[0])
    label = button.inner_text().strip()
    status = _explorer_status(app)
    assert status.startswith(("applied ", "generated ")), f"the explorer's status line after Run All: {status!r}"
    button.scroll_into_view_if_needed(timeout=10_000)
    button.click(timeout=30_000)
    _wait_until(
        page,
        f"the status line to report the {label!r} edit (it said {status!r})",
        lambda: (now := _explorer_status(app)) != status and now.startswith("applied "),
        RESPONSE_S,
    )
    _wait_until(
        page,
        f"the first image to change after clicking {label!r}",
        lambda: images.nth(0).get_attribute("src") != before[0]["src"],
        RESPONSE_S,
    )
    nb.settle(f"the {label!r} edit")
    after = [nb.image(images.nth(i).element_handle()) for i in range(4)]
    assert after[0]["src"] != before[0]["src"]
    assert any(a["digest"] != b["digest"] for a, b in zip(after, before)), (
        f"clicking {label!r} re-sent the images but no picture changed"
    )
    text = app.inner_text()
    assert "could not" not in text, f"the explorer's status line shows an error: {text[:2000]}"
    assert "working…" not in text, "the explorer still says working… after the kernel went idle"
    nb.assert_no_errors(f"clicking {label!r}")
    shot = nb.screenshot(app)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


_LATENT_PARTS = """() => {
  const table = document.querySelector("table.xrg-logits");
  if (!table) return null;
  const box = table.closest(".widget-hbox");
  return {logits: table.innerText, has_image: !!(box && box.querySelector("img.widget-image"))};
}"""


def test_latent_explorer_follows_a_direction_slider_live_in_lab(notebook):
    nb = notebook("07_pggan_latent")
    nb.run_all()
    page = nb.page
    parts = _wait_until(
        page,
        "the latent explorer (a table.xrg-logits beside its image)",
        lambda: (p := page.evaluate(_LATENT_PARTS)) and p["has_image"] and p,
        RESPONSE_S,
    )
    image = page.locator(".widget-hbox:has(table.xrg-logits) > img.widget-image").first
    before = nb.image(image.element_handle())
    assert before["src"], "the latent explorer shows no image after Run All"
    slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text=re.compile(r"^direction 1$")))
    assert slider.count() == 1, f"{slider.count()} sliders labelled 'direction 1'"
    readout = slider.locator(".widget-readout")
    start = readout.inner_text().strip()
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed(timeout=10_000)
    handle.focus()
    for _ in range(15):  # 15 steps of 0.1 along the first direction
        handle.press("ArrowRight")
    _wait_until(page, f"the slider's readout to move from {start}", lambda: readout.inner_text().strip() != start, 30)
    _wait_until(
        page, "the latent image to change after moving direction 1", lambda: image.get_attribute("src") != before["src"],
        RESPONSE_S,
    )  # fmt: skip
    nb.settle("moving direction 1")
    after = nb.image(image.element_handle())
    logits = page.evaluate(_LATENT_PARTS)["logits"]
    assert after["digest"] != before["digest"], "the slider re-sent the image but the picture is the same"
    assert logits != parts["logits"], f"the probability table did not change after moving direction 1:\n{logits}"
    assert float(readout.inner_text()) > float(start), f"the slider moved from {start} to {readout.inner_text()}"
    app = page.locator(".jp-OutputArea-output .widget-vbox", has=page.locator("table.xrg-logits")).first
    text = app.inner_text()
    assert "could not" not in text, f"the latent explorer's status line shows an error: {text[:2000]}"
    nb.assert_no_errors("moving direction 1")
    shot = nb.screenshot(app)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
