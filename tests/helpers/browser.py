"""Headless Debian chromium, driven over the DevTools protocol (CDP): what the Prefect UI really shows.

Chromium comes from Debian (``infra/browser_env.sh``); nothing is downloaded at run time. It runs in its
own process group with a fresh profile directory and is stopped by PID. The DevTools port is chosen by
chromium itself (``--remote-debugging-port=0``) and read back from the profile's ``DevToolsActivePort``,
so no fixed port is assumed free. The protocol client is a few lines over ``websockets`` (a Prefect
dependency), so there is no driver binary to match to the browser's version.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from infra.processes import alive, stop_group, tail

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
]


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """``with Chromium(profile_dir) as page: page.navigate(url); page.wait_for("js expression")``."""

    def __init__(self, profile_dir: str | Path, binary: str | None = None, timeout: float = 30.0):
        self.profile = Path(profile_dir)
        self.binary = binary or chromium_binary()
        if not self.binary:
            raise RuntimeError("chromium is not installed: run infra/browser_env.sh")
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self._ws = None
        self._ids = itertools.count(1)

    # ---- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        from websockets.sync.client import connect

        self.profile.mkdir(parents=True, exist_ok=True)
        log = self.profile / "chromium.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (active.exists() and active.read_text().strip()):
            if not alive(self.proc.pid):
                raise RuntimeError(f"chromium exited during start-up:\n{tail(log)}")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"chromium wrote no DevToolsActivePort in {self.timeout:.0f} s:\n{tail(log)}")
            time.sleep(0.1)
        port = int(active.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=self.timeout)
        self.send("Page.enable")
        self.send("Runtime.enable")

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
            self._ws = None
        if self.proc is not None:
            stop_group(self.proc.pid, timeout=10)
            self.proc = None

    # ---- the protocol -------------------------------------------------------------------------------
    def send(self, method: str, params: dict | None = None, timeout: float | None = None) -> dict:
        """One CDP command; events that arrive meanwhile are dropped."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(
                f"{expression}: {res['exceptionDetails'].get('text')} "
                f"{res['exceptionDetails'].get('exception', {}).get('description', '')}"
            )
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, interval: float = 0.5) -> Any:
        """Evaluate ``expression`` until it is truthy; return its value (raises TimeoutError with the page text)."""
        deadline = time.monotonic() + timeout
        guarded = (
            f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"  # page may be mid-load
        )
        while True:
            value = self.evaluate(guarded)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''") or ""
                raise TimeoutError(f"not true after {timeout:.0f} s: {expression}\npage text:\n{text[:3000]}")
            time.sleep(interval)
