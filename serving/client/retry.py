"""Retrying a call while the server is not answering yet, within a time budget, with capped exponential backoff."""

from __future__ import annotations

import time
from collections.abc import Callable

# Longer than a supervised restart of either server (docs/benchmarks.md has the measured restart times).
DEFAULT_RETRY_BUDGET_S = 30.0
# Retried within the budget: UNAVAILABLE (not listening, restarting), and DEADLINE_EXCEEDED (a server that came
# back but is still loading its model, or hung until the supervisor replaced it; a prediction is idempotent).
RETRIED = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
# Reconnect quickly once a restarted server listens again (gRPC's default backoff grows to minutes). Not
# grpc.min_reconnect_backoff_ms: gRPC uses it as the connect timeout too (20 s by default), and at 100 ms a
# loaded server's handshake times out ("timed out before receiving SETTINGS frame").
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]


class Unavailable(Exception):
    """A retryable failure (the server is not answering yet)."""


def retry(
    call: Callable,
    budget_s: float,
    backoff_s: float,
    max_backoff_s: float,
    max_attempts: int | None,
    fail: Callable[[str], Exception],
):
    """``call()`` until it returns, retrying on ``Unavailable`` until ``budget_s`` is spent (or
    ``max_attempts`` made); then ``fail(summary)`` is raised."""
    start, attempt, delay = time.monotonic(), 0, backoff_s
    while True:
        attempt += 1
        try:
            return call()
        except Unavailable as exc:
            spent = time.monotonic() - start
            if spent + delay > budget_s or (max_attempts is not None and attempt >= max_attempts):
                raise fail(
                    f"still unavailable after {attempt} attempt{'s' if attempt > 1 else ''} over {spent:.1f} s "
                    f"(retry budget {budget_s:g} s): {exc}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
