"""TorchServe's keys kept valid: they are made with ``token_expiry_min`` and renewed when a quarter of that is
left, in a thread of their own, so renewals are on time even while the main loop swaps or restarts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from infra.supervisor.settings import log


def instant(text: str) -> datetime:
    """Java's Instant.toString() (nanoseconds, "Z") as an aware datetime."""
    text = text.strip().removesuffix("Z")
    head, _, frac = text.partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}" if frac else head).replace(tzinfo=timezone.utc)


class KeyKeeper:
    """Renews the keys of the TorchServe whose state is in ``ts_dir``; ``renewed`` counts the renewals."""

    def __init__(self, ts_dir: Path, token_expiry_min: float, lock: threading.Lock):
        self.ts_dir, self.token_expiry_min, self.lock = ts_dir, token_expiry_min, lock
        self.renewed = 0

    def refresh(self) -> None:
        """Renew each key that has less than a quarter of its lifetime left."""
        from infra import torchserve

        with self.lock:
            try:
                expiry = torchserve.key_expiry(self.ts_dir)
            except (OSError, ValueError, KeyError):  # not written yet (starting)
                return
            margin = self.token_expiry_min * 60 / 4
            for which, when in expiry.items():
                left = (instant(when) - datetime.now(timezone.utc)).total_seconds()
                if left < margin:
                    try:
                        torchserve.refresh_key(self.ts_dir, which)
                        log(f"torchserve: new {which} key ({left:.0f} s were left)")
                        self.renewed += 1
                    except OSError:  # restarting: its socket is not up yet; next round
                        pass
                    except Exception as exc:
                        log(f"torchserve: could not renew the {which} key: {exc}")

    def run(self, stopping: threading.Event, running: Callable[[], bool]) -> None:
        """A thread's body: every second, while ``running()`` says TorchServe was started, until ``stopping``."""
        while not stopping.wait(1.0):
            if running():
                try:
                    self.refresh()
                except Exception as exc:
                    log(f"torchserve: key check failed: {exc}")
