"""Triton's requests over one kept bidirectional stream (ModelStreamInfer), one request at a time.

A unary call sets up and tears down an HTTP/2 stream and Triton's per-call state every time; a kept stream
does not (bench/serve.py measures the difference; docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import weakref


class StreamBroken(Exception):
    """Internal: the inference stream failed or timed out; the request goes again as a unary call."""


class InferStream:
    """One bidirectional ModelStreamInfer call kept open, carrying one request at a time.

    The stream's answers carry no gRPC status (an error is only a message), and reading one has no timeout:
    so an error answer is sent again as a unary call (which says INVALID_ARGUMENT, NOT_FOUND, ...), and a
    watchdog cancels a stream whose answer is later than the client's timeout."""

    _watched: weakref.WeakSet[InferStream] = weakref.WeakSet()
    _watchdog: threading.Thread | None = None
    _watch_lock = threading.Lock()
    WATCH_EVERY_S = 0.25

    def __init__(self, stub, metadata, timeout_s: float):
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self.timeout_s = timeout_s
        self._deadline: float | None = None
        self.broken = False
        self._responses = stub.ModelStreamInfer(iter(self._requests.get, None), metadata=metadata)
        self._watch(self)

    @classmethod
    def _watch(cls, stream: InferStream) -> None:
        with cls._watch_lock:
            cls._watched.add(stream)
            if cls._watchdog is None or not cls._watchdog.is_alive():
                cls._watchdog = threading.Thread(target=cls._watch_loop, name="alloynet-stream-watchdog", daemon=True)
                cls._watchdog.start()

    @classmethod
    def _watch_loop(cls) -> None:
        while True:
            time.sleep(cls.WATCH_EVERY_S)
            now = time.monotonic()
            for stream in list(cls._watched):
                deadline = stream._deadline
                if deadline is not None and now > deadline:
                    stream.close()

    def infer(self, request):
        """The answer (ModelStreamInferResponse) to ``request``, or StreamBroken."""
        rid = str(next(self._ids))
        request.id = rid
        self._deadline = time.monotonic() + self.timeout_s
        self._requests.put(request)
        try:
            answer = next(self._responses)
        except Exception as exc:  # grpc.RpcError (server gone, cut by the watchdog), StopIteration (stream ended)
            self.close()
            raise StreamBroken(f"{type(exc).__name__}: {exc}") from None
        finally:
            self._deadline = None
        if answer.infer_response.id != rid and not answer.error_message:
            self.close()
            raise StreamBroken(f"answer {answer.infer_response.id!r} to request {rid!r}")
        return answer

    def close(self) -> None:
        if not self.broken:
            self.broken = True
            self._requests.put(None)  # ends the request side
        self._responses.cancel()
        self._watched.discard(self)
