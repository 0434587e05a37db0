"""Headless Chromium driven over the DevTools protocol: the panel's tests and the README's screenshots.

Debian's `chromium` (CI installs it; tests skip without it) runs with a private profile and
`--remote-debugging-port=0`; the port is read from the profile's DevToolsActivePort file. One page target is
driven over its websocket with aiohttp (already a dependency; no browser-automation package), on an event
loop of its own thread so that tests stay synchronous. Clicks and typing are the browser's own input events
(Input.dispatchMouseEvent at the element's centre, Input.insertText), so an element that is hidden or covered
does not get clicked; `confirm()` dialogs are accepted. Uncaught exceptions and console errors of the page are
kept in `Page.errors` for the tests to check.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-allow-origins=*")


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with its own profile; `page(url)` opens a tab. Use as a context manager."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900):
        if CHROMIUM is None:
            raise BrowserError("no chromium on PATH (apt-get install chromium)")
        self.profile, self.width, self.height = Path(profile), width, height
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cdp", daemon=True)
        self._pages: list[Page] = []

    def __enter__(self) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        active = self.profile / "DevToolsActivePort"
        active.unlink(missing_ok=True)
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-port=0", f"--window-size={self.width},{self.height}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if active.exists() and (lines := active.read_text().split()) and lines[0].isdigit():
                self.port = int(lines[0])
                break
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.05)
        else:
            raise BrowserError("chromium did not open its DevTools port within 30 s")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for p in self._pages:
            p._close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def run(self, coro, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def page(self, url: str = "about:blank", width: int | None = None, height: int | None = None) -> Page:
        page = Page(self, width or self.width, height or self.height)
        self.run(page._open())
        self._pages.append(page)
        if url != "about:blank":
            page.goto(url)
        return page


class Page:
    """One tab: navigate, evaluate, wait, click, type, screenshot."""

    def __init__(self, browser: Browser, width: int, height: int):
        self.browser, self.width, self.height = browser, width, height
        self.errors: list[str] = []
        self._ids = iter(range(1, 1 << 31))
        self._waiting: dict[int, asyncio.Future] = {}
        self._answers: set[asyncio.Future] = set()  # dialog answers in flight: asyncio keeps tasks weakly
        self._session = self._ws = self._reader = None

    # ---- the protocol --------------------------------------------------------------------------------

    async def _open(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        base = f"http://127.0.0.1:{self.browser.port}"
        async with self._session.put(f"{base}/json/new?about:blank") as r:
            target = json.loads(await r.text())
        self._ws = await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())
        for domain in ("Page", "Runtime"):
            await self._send(f"{domain}.enable")
        await self._send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                         deviceScaleFactor=1, mobile=False)

    async def _read(self) -> None:
        import aiohttp

        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            doc = json.loads(msg.data)
            if "id" in doc:
                fut = self._waiting.pop(doc["id"], None)
                if fut and not fut.done():
                    fut.set_result(doc)
            else:
                self._event(doc.get("method"), doc.get("params") or {})
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(BrowserError("the page's DevTools connection closed"))

    def _event(self, method: str, params: dict) -> None:
        if method == "Page.javascriptDialogOpening":
            task = asyncio.ensure_future(self._send("Page.handleJavaScriptDialog", accept=True))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.errors.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))

    async def _send(self, method: str, **params: Any) -> dict:
        n = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[n] = fut
        await self._ws.send_str(json.dumps({"id": n, "method": method, "params": params}))
        doc = await fut
        if "error" in doc:
            raise BrowserError(f"{method}: {doc['error'].get('message')}")
        return doc.get("result", {})

    def send(self, method: str, timeout: float = 60.0, **params: Any) -> dict:
        return self.browser.run(self._send(method, **params), timeout)

    def _close(self) -> None:
        async def close() -> None:
            if self._ws is not None:
                await self._ws.close()
            if self._session is not None:
                await self._session.close()
        try:
            self.browser.run(close(), 10)
        except Exception:  # noqa: BLE001, S110 - the browser may already be gone
            pass

    # ---- what tests do -------------------------------------------------------------------------------

    def goto(self, url: str, ready: str = "document.readyState === 'complete'", timeout: float = 30.0) -> None:
        self.send("Page.navigate", url=url)
        self.wait(ready, timeout, what=f"{url} to load")

    def eval(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of a JavaScript expression (a promise is awaited); a thrown error raises BrowserError."""
        got = self.send("Runtime.evaluate", timeout, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in got:
            d = got["exceptionDetails"]
            raise BrowserError(d.get("exception", {}).get("description") or d.get("text", "evaluation failed"))
        return got.get("result", {}).get("value")

    def wait(self, expression: str, timeout: float = 20.0, what: str | None = None) -> Any:
        """Poll `expression` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.eval(expression)
            except BrowserError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or expression}")
            time.sleep(0.1)

    def text(self, selector: str) -> str:
        return self.eval(f"document.querySelector({json.dumps(selector)})?.innerText ?? ''")

    def click(self, selector: str, timeout: float = 10.0) -> None:
        """A real mouse click at the centre of the first element `selector` finds, once it is visible and enabled."""
        sel = json.dumps(selector)
        box = self.wait(f"""(() => {{ const el = document.querySelector({sel});
            if (!el || el.disabled) return null;
            el.scrollIntoView({{block: "center"}});
            const r = el.getBoundingClientRect();
            if (!r.width || !r.height) return null;
            const x = r.left + r.width / 2, y = r.top + r.height / 2;
            const top = document.elementFromPoint(x, y);
            return top && (top === el || el.contains(top)) ? [x, y] : null; }})()""", timeout,
                        what=f"{selector} to be clickable")
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type(self, selector: str, text: str, enter: bool = False) -> None:
        """Focus `selector`, replace its value by typing `text`, then press Enter if asked."""
        self.click(selector)
        self.eval(f"document.querySelector({json.dumps(selector)}).select?.()")
        self.send("Input.insertText", text=text)
        if enter:
            self.send("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13,
                      text="\r")
            self.send("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)

    def select(self, selector: str, value: str) -> None:
        """Choose an option of a <select> as a user's choice does: the value, then a change event."""
        self.eval(f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
            el.value = {json.dumps(value)}; el.dispatchEvent(new Event("change", {{bubbles: true}})); }})()""")

    def screenshot(self, path: Path, selector: str | None = None, pad: int = 0) -> Path:
        """A PNG of the viewport, or of the element `selector` finds (with `pad` pixels around it)."""
        params: dict[str, Any] = {"format": "png"}
        if selector:
            r = self.eval(f"""(() => {{
                const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();
                return [r.left + scrollX, r.top + scrollY, r.width, r.height]; }})()""")
            params.update(captureBeyondViewport=True, clip={
                "x": max(0, r[0] - pad), "y": max(0, r[1] - pad), "width": r[2] + 2 * pad,
                "height": r[3] + 2 * pad, "scale": 1})
        data = self.send("Page.captureScreenshot", **params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
