"""The MLflow UI, checked like a person would: serve a study store with `python -m orchestrator.ui`
(what `make ui` runs), open the printed link in headless Chromium and look for the trial runs.

Needs the `chromium` browser (Debian package; .ci/run installs it): skipped without it."""
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium browser on PATH (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _study_store(tracking_uri: str, tmp_path: Path):
    from orchestrator import tracking

    exp = tracking.ensure_experiment(tracking_uri, "ui-study", tmp_path / "art")
    parent = tracking.ensure_parent_run(tracking_uri, exp, "ui-study", {})
    c = tracking.client(tracking_uri)
    names = []
    for seed in (0, 1):
        config = {"model": "schnet", "activation": "isilu", "denorm": True, "rescale": True, "seed": seed}
        names.append(tracking.trial_run_name(config))
        run = c.create_run(exp, run_name=names[-1], tags={"mlflow.parentRunId": parent, "seed": str(seed)})
        c.log_metric(run.info.run_id, "test_force_loss", 0.5 + seed)
        c.set_terminated(run.info.run_id)
    c.set_terminated(parent)
    return exp, names


@pytest.fixture
def ui_server(tracking_uri, tmp_path):
    """`python -m orchestrator.ui` on a free port in its own session; stopped by process group."""
    exp, names = _study_store(tracking_uri, tmp_path)
    storage = Path(tracking_uri.removeprefix("sqlite:///")).parent
    port = _free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.ui", "--storage", str(storage),
                                 "--port", str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow ui did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield exp, names, log.read_text(), port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Browser:
    """Headless Chromium driven over --remote-debugging-pipe: the DevTools protocol as NUL-terminated JSON
    on the child's fds 3 (commands) and 4 (replies), so no websocket client is needed."""

    def __init__(self, port: int | None = None):
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()

        def fds():  # in the child, before exec
            a, b = os.dup(to_child), os.dup(from_child)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.proc = subprocess.Popen([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                                      "--remote-debugging-pipe", "--window-size=1400,900",
                                      *([f"--explicitly-allowed-ports={port}"] if port else []), "about:blank"],
                                     close_fds=False, preexec_fn=fds, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf, self._id, self._session = b"", 0, None

    def call(self, method: str, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self._session:
            msg["sessionId"] = self._session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url)["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def text(self) -> str:
        try:
            return self.js("document.body ? document.body.innerText : ''") or ""
        except RuntimeError as e:  # "Cannot find default execution context" while the page loads
            if "context" not in str(e):
                raise
            return ""

    def wait_for_text(self, *needles: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if all(n in text for n in needles) or time.monotonic() > deadline:
                return text
            time.sleep(0.25)

    def screenshot(self, path) -> None:
        Path(path).write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self._session = None
            self.call("Browser.close")
            self.proc.wait(10)
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        finally:
            os.close(self._w)
            os.close(self._r)


@pytest.fixture
def browser(ui_server):
    b = Browser(port=ui_server[3])  # a free port can be on Chromium's unsafe-port list (5060, 6000, ...)
    yield b
    b.close()


def test_printed_link_opens_the_study_on_its_trial_runs(ui_server, browser):
    """Open the link `make ui` prints: the runs table shows the study run; expanding it shows the trials."""
    exp, names, printed, _ = ui_server
    link = re.search(r"ui-study: (http://\S+)", printed).group(1)
    assert link.endswith(f"/#/experiments/{exp}?workflowType=machine_learning")
    browser.open(link)
    text = browser.wait_for_text("study · ui-study", "3 matching runs")
    assert "study · ui-study" in text and "3 matching runs" in text, f"runs table not shown at {link}:\n{text[:2000]}"
    assert "No data available" not in text  # the GenAI overview's empty charts
    # trial runs are nested under the study run: click its expander, as a person would
    assert browser.js("(() => { const b = document.querySelector("
                      "'button[data-component-id*=\"runnamecellrenderer\"]'); if (b) b.click(); return !!b; })()")
    text = browser.wait_for_text(*names, timeout=10)
    shot = os.environ.get("DCNN_UI_SCREENSHOT")  # to look at it: DCNN_UI_SCREENSHOT=/tmp/ui.png
    if shot:
        browser.screenshot(shot)
    for name in names:  # the runs table truncates long names visually; the text is all there
        assert name in text, f"trial run {name!r} not shown after expanding the study run:\n{text[:2000]}"


def test_experiments_are_marked_model_training(tracking_uri, tmp_path):
    from orchestrator import tracking

    c = tracking.client(tracking_uri)
    new = tracking.ensure_experiment(tracking_uri, "ui-kind-new", tmp_path / "a")
    old = c.create_experiment("ui-kind-old")  # made before the tag existed: tagged when found again
    assert tracking.ensure_experiment(tracking_uri, "ui-kind-old", tmp_path / "b") == old
    for exp in (new, old):
        assert c.get_experiment(exp).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
