"""Headless Chromium driven over the DevTools protocol: open a page of a single-page app, wait
until it shows some text, click, read form values, take a screenshot.

    with Chromium(tmp_path / "chromium") as browser:
        browser.open("http://127.0.0.1:4200/deployments")
        browser.wait_for_text("mnist-pipeline")
        browser.screenshot(tmp_path / "deployments.png")

Debian's ``chromium`` (``apt-get install chromium``; ``make test`` installs it) runs headless in a
throwaway profile, its DevTools endpoint on 127.0.0.1. The protocol rather than ``--dump-dom``:
the apps render after their API calls return, which on a loaded machine no fixed virtual time
budget matches, and a cron expression is only shown in the schedule editor, which takes a click.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import time
from pathlib import Path

from tasks.ops import processes

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")


class Chromium:
    def __init__(self, workdir: Path, *, width: int = 1400, height: int = 1000, timeout: float = 60.0):
        self.workdir = Path(workdir)
        self.size = (width, height)
        self.timeout = timeout
        self.log = self.workdir / "chromium.log"
        self.proc: processes.Proc | None = None
        self._ids = itertools.count(1)

    # -- the browser process ---------------------------------------------------------------------

    def __enter__(self) -> Chromium:
        binary = shutil.which("chromium")
        if binary is None:
            raise RuntimeError("chromium is not installed: `apt-get install chromium` (or run the "
                               "tests with `make test`, which installs it)")
        profile = self.workdir / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a previous browser's
        self.proc = processes.spawn([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                    log=self.log, env=dict(os.environ), cwd=self.workdir)
        try:
            self._connect(profile / "DevToolsActivePort")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _connect(self, port_file: Path) -> None:
        from websockets.sync.client import connect

        # Chromium writes the port it picked and the browser's endpoint path once it listens.
        processes.wait_until(lambda: len(_lines(port_file)) == 2, proc=self.proc, timeout=self.timeout,
                             what=f"DevTools endpoint of chromium (log: {self.log})")
        port, path = _lines(port_file)
        self._ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, proxy=None,
                           open_timeout=self.timeout)
        target = self._call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self._call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self._resize(self.size[1])

    def __exit__(self, *exc) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
        if self.proc is not None:
            processes.stop(self.proc, grace=5)

    def _resize(self, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=self.size[0], height=height,
                  deviceScaleFactor=1, mobile=False)

    # -- the protocol ------------------------------------------------------------------------------

    def _call(self, method: str, session: str | None = None, **params) -> dict:
        ident = next(self._ids)
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while True:
            reply = json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if reply.get("id") != ident:
                continue  # an event, or the answer to a call that timed out earlier
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply["result"]

    def call(self, method: str, **params) -> dict:
        """A DevTools command sent to the page."""
        return self._call(method, self._session, **params)

    def js(self, expression: str):
        """The value of a JavaScript expression evaluated in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    # -- what a person does --------------------------------------------------------------------------

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        """The text a person sees on the page (form fields' values excluded)."""
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout: float | None = None) -> str:
        """The page's text once it holds every needle; an AssertionError naming those it lacks."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                url = self.js("location.href")
                raise AssertionError(f"{url} does not show {missing}; it shows:\n{text[:3000]}")
            time.sleep(0.5)

    def click(self, selector: str, text: str | None = None) -> None:
        """Click the first element matching ``selector`` (and whose text is ``text``, if given)."""
        find = (f"[...document.querySelectorAll({json.dumps(selector)})].find(e => {json.dumps(text)} === null"
                f" || (e.innerText || '').trim() === {json.dumps(text)})")
        box = self.js(f"(() => {{ const e = {find}; if (!e) return null; e.scrollIntoView({{block: 'center'}});"
                      f" const b = e.getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2]; }})()")
        if box is None:
            raise AssertionError(f"no {selector} {text or ''} on {self.js('location.href')}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def texts(self, selector: str) -> list[str]:
        """The text of each element matching ``selector``, in page order."""
        return self.js(f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.innerText.trim())")

    def form_values(self) -> list[str]:
        """What the page's text fields, text areas and drop-downs hold."""
        return self.js("[...document.querySelectorAll('input, textarea, select')].map(e => e.value)")

    def screenshot(self, path: Path, *, whole: bool = False) -> Path:
        """A PNG of the window, or with ``whole`` of everything its scrolled panels hold: the
        window is made as much taller as the tallest panel scrolls."""
        # A dialog that fades in would be caught half transparent: let transitions finish.
        self.js("Promise.all(document.getAnimations()"
                ".filter(a => a.effect && a.effect.getComputedTiming().endTime < Infinity)"
                ".map(a => a.finished.catch(() => null))).then(() => true)")
        if whole:
            self._resize(self.size[1] + self.js(
                "Math.max(0, ...[...document.querySelectorAll('*')]"
                ".filter(e => ['auto', 'scroll'].includes(getComputedStyle(e).overflowY))"
                ".map(e => e.scrollHeight - e.clientHeight))"))
            time.sleep(0.5)  # let the app lay itself out again
        try:
            data = self.call("Page.captureScreenshot", format="png")["data"]
        finally:
            self._resize(self.size[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []
