"""Serving pieces that need no server: header checks before decoding, the client's retries, key re-reading,
errors and endpoint resolution, the serve command's refusals and the .mar re-versioning."""

from __future__ import annotations

import io
import json
import socket
import struct
import zipfile
import zlib

import grpc
import numpy as np
import pytest

from alloynet.captures.image import encode_image
from serving.capture_checks import CaptureInputError, check_header, header_shape


def _png_header(width: int, height: int) -> bytes:
    """Just the signature and IHDR of a 16-bit grayscale PNG (what header_shape reads; the pixels never matter)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
        + b"\x00" * 64
    )


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_header_shape_reads_png_tiff_and_npy_without_decoding():
    assert header_shape(encode_image(np.zeros((1, 64, 48), np.uint16))[0]) == (1, 64, 48)
    assert header_shape(encode_image(np.zeros((3, 32, 40), np.uint16))[0]) == (3, 32, 40)  # TIFF, a page a channel
    assert header_shape(_npy(np.zeros((2, 5, 7), np.float32))) == (2, 5, 7)
    assert header_shape(_npy(np.zeros((5, 7), np.uint16))) == (1, 5, 7)
    assert header_shape(_png_header(10000, 10000)) == (1, 10000, 10000)
    assert header_shape(b"GIF89a....") is None  # not ours to judge: the decoder says "bad magic bytes"
    with pytest.raises(CaptureInputError, match="corrupt or truncated PNG"):
        header_shape(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(CaptureInputError, match="corrupt .npy"):
        header_shape(b"\x93NUMPY\x01\x00\xff\xffnot a header")
    tiff = bytearray(encode_image(np.zeros((2, 8, 8), np.uint16))[0])
    struct.pack_into("<I", tiff, 4, len(tiff) + 100)  # the first page's offset points past the end
    with pytest.raises(CaptureInputError, match="corrupt TIFF"):
        header_shape(bytes(tiff))


def test_check_header_refuses_a_size_other_than_the_models_before_decoding():
    check_header(encode_image(np.zeros((1, 64, 64), np.uint16))[0], (1, 64, 64))
    with pytest.raises(
        CaptureInputError,
        match=r"PNG declares \[C, H, W\] = \[1, 10000, 10000\] \(100,000,000 values\)"
        r"; the model takes \[1, 64, 64\]: refused before decoding",
    ):
        check_header(_png_header(10000, 10000), (1, 64, 64))
    with pytest.raises(CaptureInputError, match="empty array"):
        check_header(_npy(np.zeros((0,), np.uint16)), (1, 64, 64))


def test_torchserve_handler_refuses_a_decompression_bomb_unread():
    from serving.torchserve.handler import AlloyHandler

    h = AlloyHandler()
    h.shape, h.max_adu = (1, 64, 64), 65535.0
    with pytest.raises(CaptureInputError, match="10000"):
        h.decode({"data": _png_header(10000, 10000)})  # header only: decoding it would fail differently
    assert h.decode({"data": encode_image(np.ones((1, 64, 64), np.uint16))[0]}).shape == (1, 64, 64)


def test_wedge_size_is_read_where_it_enters_the_torchserve_handler():
    """The graph's third input: a JSON number (``wedge_mm``) or the sidecar's rig.wedge_mm, else 0 (unknown).
    The handler refuses what is not one number; the value itself is the graph's to judge (its status)."""
    from serving.torchserve.handler import AlloyHandler

    h = AlloyHandler()
    assert h.wedge({"wedge_mm": b"70.0"}).tolist() == [70.0]
    assert h.wedge({"sidecar": json.dumps({"rig": {"wedge_mm": 50}}).encode()}).tolist() == [50.0]
    assert h.wedge({"wedge_mm": b"70", "sidecar": json.dumps({"rig": {"wedge_mm": 50}}).encode()}).tolist() == [70.0]
    assert h.wedge({"data": b"..."}).tolist() == [0.0] and h.wedge(b"raw body").tolist() == [0.0]
    assert h.wedge({"wedge_mm": b"-5"}).tolist() == [-5.0]  # the graph names it: status wedge_out_of_range
    for bad, why in ((b"[50, 70]", "one wedge"), (b"fifty", "not readable")):
        with pytest.raises(CaptureInputError, match=why) as exc:
            h.wedge({"wedge_mm": bad})
        assert exc.value.field == "wedge_mm"
    with pytest.raises(CaptureInputError, match="not readable") as exc:
        h.wedge({"sidecar": json.dumps({"calibration": {}}).encode()})  # a sidecar without rig.wedge_mm
    assert exc.value.field == "wedge_mm"


# -- the client ---------------------------------------------------------------------------------------------


def test_client_takes_calibration_and_wedge_from_the_sidecar_unless_given(tmp_path):
    from serving.client import InvalidCaptureError, context_of

    cap = tmp_path / "plate7.png"
    cap.write_bytes(b"not read here")
    assert context_of(cap) == (None, None)  # no sidecar: both unknown, the server flags calibration_missing
    cap.with_suffix(".json").write_text(
        json.dumps({"calibration": {"dark_adu": [1000.0], "flat_adu": [50000.0]}, "rig": {"wedge_mm": 70.0}})
    )
    cal, wedge = context_of(cap)
    assert cal.tolist() == [[1000.0, 50000.0]] and wedge == 70.0
    cal, wedge = context_of(cap, [[900.0, 48000.0]], 50.0)  # what is given wins
    assert cal.tolist() == [[900.0, 48000.0]] and wedge == 50.0
    assert context_of(np.zeros((1, 4, 4), np.uint16), None, 50.0)[1] == 50.0  # an array has no sidecar
    cap.with_suffix(".json").write_text("{not json")
    with pytest.raises(InvalidCaptureError, match="sidecar: not readable") as exc:
        context_of(cap)
    assert exc.value.capture == str(cap.with_suffix(".json"))


def test_torchserve_request_carries_the_wedge_size_as_given():
    from serving.client import InvalidCaptureError, TorchServeClient

    client = TorchServeClient("127.0.0.1:9", token="k", retry_budget_s=0)
    req = client._request(b"png", np.array([[1000.0, 50000.0]]), 70.0, "c.png")
    assert json.loads(req.input["wedge_mm"]) == 70.0 and json.loads(req.input["calibration"]) == [[1000.0, 50000.0]]
    assert "wedge_mm" not in client._request(b"png", None, None, "c.png").input  # unknown: not sent
    for bad in (-5.0, 5000.0):  # the value is the graph's to judge: sent, and named by its status
        assert json.loads(client._request(b"png", None, bad, "c.png").input["wedge_mm"]) == bad
    with pytest.raises(InvalidCaptureError, match="wedge_mm") as exc:  # not one number: refused unsent
        client._request(b"png", None, [50.0, 70.0], "c.png")
    assert exc.value.capture == "c.png"
    client.close()


class _RpcError(grpc.RpcError):
    def __init__(self, code, details="refused"):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def _key_file(path, key: str):
    path.write_text(
        json.dumps(
            {
                "inference": {"key": key, "expiration time": "2099-01-01T00:00:00Z"},
                "management": {"key": "m"},
                "API": {"key": "a"},
            }
        )
    )
    return path


def test_torchserve_client_reads_the_key_file_again_when_refused(tmp_path):
    from serving.client import PermissionDeniedError, ServerUnavailableError, TorchServeClient

    kf = _key_file(tmp_path / "key_file.json", "old")
    client = TorchServeClient("127.0.0.1:9", key_file=kf, retry_budget_s=1.0, backoff_s=0.05)
    assert client.token == "old"
    seen = []

    def call(md):
        seen.append(md[0][1])
        if md[0][1] != "Bearer new":
            raise _RpcError(grpc.StatusCode.PERMISSION_DENIED)
        return "answered"

    _key_file(kf, "new")  # the server restarted or renewed its keys meanwhile
    assert client._rpc(call, "c.png") == "answered" and seen == ["Bearer old", "Bearer new"]

    never = lambda md: (_ for _ in ()).throw(_RpcError(grpc.StatusCode.PERMISSION_DENIED))  # noqa: E731
    with pytest.raises(PermissionDeniedError, match="still unavailable after .* attempts") as exc:
        client._rpc(never, "c.png")
    assert exc.value.code == "PERMISSION_DENIED" and "c.png" in str(exc.value) and str(kf) in str(exc.value)

    down = lambda md: (_ for _ in ()).throw(_RpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"))  # noqa: E731
    with pytest.raises(ServerUnavailableError, match=r"retry budget 1 s") as exc:
        client._rpc(down, "c.png")
    assert exc.value.code == "UNAVAILABLE" and str(exc.value).startswith("torchserve at 127.0.0.1:9, model alloynet")
    client.close()


def test_torchserve_client_maps_codes_as_triton_reports_them():
    from serving.client import InvalidCaptureError, ModelNotFoundError, ServingError, TorchServeClient

    client = TorchServeClient("127.0.0.1:9", token="k", retry_budget_s=0)
    internal = _RpcError(
        grpc.StatusCode.INTERNAL, "Model not found: nope\norg.pytorch.serve.archive.model.ModelNotFoundException"
    )
    with pytest.raises(ModelNotFoundError) as exc:
        client._rpc(lambda md: (_ for _ in ()).throw(internal), None)
    assert exc.value.code == "NOT_FOUND" and "Model not found: nope" in str(exc.value)
    with pytest.raises(InvalidCaptureError) as exc:  # TorchServe 0.12 answers a bad capture with OK + error body
        client.max_request_bytes = 10
        client.predict_bytes(b"x" * 11, capture="big.png")
    assert exc.value.code == "RESOURCE_EXHAUSTED" and "over the server's limit of 10 bytes" in str(exc.value)
    with pytest.raises(ServingError, match="without the key|give the key file"):
        client._rpc(lambda md: (_ for _ in ()).throw(_RpcError(grpc.StatusCode.PERMISSION_DENIED)), None)
    client.close()


def test_endpoint_comes_from_the_environment_then_the_serve_env_file(tmp_path, monkeypatch):
    from serving import client as c

    monkeypatch.delenv("ALLOYNET_SERVING_URL", raising=False)
    monkeypatch.delenv("ALLOYNET_TORCHSERVE_URL", raising=False)
    monkeypatch.delenv("ALLOYNET_TORCHSERVE_KEY_FILE", raising=False)
    monkeypatch.delenv("ALLOYNET_TORCHSERVE_MAX_REQUEST_BYTES", raising=False)
    monkeypatch.setenv("ALLOYNET_SERVE_DIR", str(tmp_path))
    assert c.default_url() == "triton://127.0.0.1:8001/alloynet"  # nothing served: the default
    kf = _key_file(tmp_path / "key file.json", "k1")
    (tmp_path / "serving.env").write_text(
        "# comment\nexport ALLOYNET_SERVING_URL=triton://127.0.0.1:18001/alloynet\n"
        "export ALLOYNET_TORCHSERVE_URL=torchserve://127.0.0.1:17070/alloynet\n"
        f"export ALLOYNET_TORCHSERVE_KEY_FILE='{kf}'\nexport ALLOYNET_TORCHSERVE_MAX_REQUEST_BYTES=1024\n"
    )
    assert c.default_url() == "triton://127.0.0.1:18001/alloynet"
    served = c.connect("torchserve://127.0.0.1:17070/alloynet")
    assert served.backend.token == "k1" and served.backend.max_request_bytes == 1024
    other = c.connect("torchserve://127.0.0.1:17099/alloynet")  # not the served one: nothing borrowed
    assert other.backend.token is None and other.backend.max_request_bytes is None
    monkeypatch.setenv("ALLOYNET_SERVING_URL", "triton://10.0.0.5:8001/alloynet")
    assert c.default_url() == "triton://10.0.0.5:8001/alloynet"
    for cl in (served, other):
        cl.close()
    with pytest.raises(ValueError, match="expected triton://"):
        c.connect("http://127.0.0.1:8000")


def test_errors_say_which_server_which_capture_and_what_was_expected():
    from serving.client import InvalidCaptureError, ServingError

    e = InvalidCaptureError(
        "image.shape: expected [C, H, W] = [1, 64, 64], got [2, 64, 64]",
        server="triton",
        target="127.0.0.1:8001",
        model="alloynet",
        capture="plate7.png",
    )
    assert str(e) == (
        "triton at 127.0.0.1:8001, model alloynet: plate7.png: image.shape: expected [C, H, W] = "
        "[1, 64, 64], got [2, 64, 64]"
    )
    assert e.code == "INVALID_ARGUMENT" and isinstance(e, ValueError)
    assert ServingError("x", code="INTERNAL").code == "INTERNAL"


# -- alloynet serve: what it refuses, the .mar version, key times --------------------------------------------


def test_serve_start_refuses_clearly(tmp_path, monkeypatch):
    from alloynet.registry import open_registry
    from infra import serve, triton

    with pytest.raises(serve.ServeError, match="does not exist: run `make demo`"):
        serve.start(serve.ServeConfig(registry=str(tmp_path / "nowhere")), tmp_path / "s1")
    open_registry(tmp_path / "empty")
    with pytest.raises(serve.ServeError, match="no champion yet"):
        serve.start(serve.ServeConfig(registry=str(tmp_path / "empty")), tmp_path / "s2")
    reg = open_registry(tmp_path / "reg")
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel" / "x").write_text("x")
    reg.promote(reg.publish(tmp_path / "rel").version, "t")
    monkeypatch.setattr(triton, "available", lambda: (True, "tritonserver"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(serve.ServeError, match=f"port\\(s\\) in use: triton gRPC {port}"):
            serve.start(serve.ServeConfig(registry=str(tmp_path / "reg"), triton_grpc_port=port), tmp_path / "s3")
    assert serve.status(tmp_path / "s3")["status"] == "not started"
    assert serve.stop(tmp_path / "s3") == {"supervisor": "not running", "leftovers": 0}


def test_mar_gets_the_generation_as_its_version(tmp_path):
    from infra.serve import mar_with_version

    src = tmp_path / "alloynet.mar"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "alloynet", "modelVersion": "1.0"}}))
        z.writestr("model.pt", b"weights")
    out = mar_with_version(src, tmp_path / "alloynet-g7.mar", "7")
    with zipfile.ZipFile(out) as z:
        assert json.loads(z.read("MAR-INF/MANIFEST.json"))["model"] == {"modelName": "alloynet", "modelVersion": "7"}
        assert z.read("model.pt") == b"weights"


def test_torchserve_key_times_are_read_to_the_microsecond():
    from datetime import datetime, timezone

    from infra.serve import _instant

    assert _instant("2026-11-22T03:58:08.058324303Z") == datetime(2026, 11, 22, 3, 58, 8, 58324, tzinfo=timezone.utc)
    assert _instant("2026-11-22T03:58:08Z") == datetime(2026, 11, 22, 3, 58, 8, tzinfo=timezone.utc)


def test_torchserve_key_file_read_during_a_rewrite_waits_for_the_whole_file(tmp_path):
    """TorchServe rewrites key_file.json in place on renewal: a read that sees it empty must read it again (a swap
    failed in CI with a JSON error from exactly that), and a file that never becomes JSON is named in the error."""
    import threading

    from infra import torchserve

    path = tmp_path / torchserve.KEY_FILE
    path.write_text("")
    keys = {
        "management": {"key": "m1", "expiration time": "2026-11-22T10:00:00Z"},
        "inference": {"key": "i1"},
        "API": {"key": "a1"},
    }
    timer = threading.Timer(0.3, lambda: path.write_text(json.dumps(keys)))
    timer.start()
    try:
        assert torchserve.read_keys(tmp_path) == {"management": "m1", "inference": "i1", "API": "a1"}
    finally:
        timer.cancel()
    assert torchserve.key_expiry(tmp_path) == {"management": "2026-11-22T10:00:00Z"}
    path.write_text('{"management": {"ke')
    with pytest.raises(ValueError, match="key_file.json is not valid JSON"):
        torchserve._key_file(tmp_path, wait_s=0.2)


# -- the Triton client's kept stream, against a fake server -------------------------------------------


class _FakeTriton:
    """A gRPC server speaking Triton's protocol (its generated servicer) whose stream and unary answers the
    test decides: ``stream(request, context)`` -> a ModelStreamInferResponse or None (never answer), and
    ``unary(request, context)`` -> a ModelInferResponse (or context.abort)."""

    def __init__(self, stream, unary):
        import threading
        from concurrent import futures

        from tritonclient.grpc import service_pb2_grpc

        fake = self

        class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
            def ModelStreamInfer(self, request_iterator, context):
                for request in request_iterator:
                    answer = stream(request, context)
                    if answer is None:  # hang, as a stopped server does
                        fake.hung.wait(30)
                        return
                    yield answer

            def ModelInfer(self, request, context):
                fake.unary_calls += 1
                return unary(request, context)

        self.hung, self.unary_calls = threading.Event(), 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.hung.set()
        self.server.stop(grace=None)


def _answer(request):
    """A well-formed ModelInferResponse for a batch-1 request: the contract's outputs, K = 5."""
    from tritonclient.grpc import service_pb2

    from alloynet import contract

    r = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
    for name in contract.OUTPUT_NAMES:
        dims = contract.output_dims(name, 5) or [1]
        o = r.outputs.add()
        o.name, o.datatype = name, "FP32"
        o.shape.extend([1, *dims])
        r.raw_output_contents.append(np.full([1, *dims], 0.2, np.float32).tobytes())
    return r


def _batch1():
    return np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 1, 2), np.float32), np.zeros((1, 1), np.float32)


def test_triton_stream_that_fails_falls_back_to_unary_calls():
    from serving.client import TritonClient

    def stream(request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "going away")

    with _FakeTriton(stream, lambda request, context: _answer(request)) as fake:
        client = TritonClient(f"127.0.0.1:{fake.port}", retry_budget_s=5)
        for _ in range(3):
            out = client.infer_array(*_batch1())
            assert out["probabilities"].shape == (1, 5) and out["thickness_mm"].shape == (1,)
        assert client.stream_answers == 0 and fake.unary_calls == 3  # each answered by a unary call
        client.close()


def test_triton_stream_error_is_asked_again_unary_for_its_code():
    from tritonclient.grpc import service_pb2

    from serving.client import InvalidCaptureError, TritonClient

    def stream(request, context):
        return service_pb2.ModelStreamInferResponse(error_message="image: NaN at item 0")

    def unary(request, context):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "image: 1 pixel(s) are NaN or infinite")

    with _FakeTriton(stream, unary) as fake:
        client = TritonClient(f"127.0.0.1:{fake.port}")
        with pytest.raises(InvalidCaptureError) as exc:
            client.infer_array(*_batch1())
        assert exc.value.code == "INVALID_ARGUMENT" and exc.value.message == "image: 1 pixel(s) are NaN or infinite"
        assert fake.unary_calls == 1 and client.stream_answers == 0
        client.close()


def test_triton_stream_that_hangs_is_cut_at_the_timeout_and_the_budget_holds():
    import time

    from serving.client import ServerUnavailableError, TritonClient

    def unary(request, context):
        time.sleep(2)  # past the client's timeout: DEADLINE_EXCEEDED, retried within the budget
        return _answer(request)

    with _FakeTriton(lambda request, context: None, unary) as fake:
        client = TritonClient(f"127.0.0.1:{fake.port}", timeout_s=0.5, retry_budget_s=1.0, backoff_s=0.05)
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="DEADLINE_EXCEEDED"):
            client.infer_array(*_batch1())
        took = time.monotonic() - t0
        # the stream's wait ends at its timeout (+ the watchdog's period), then unary calls until the budget:
        # about 1.8 s; without the watchdog the fake's hung stream would hold it for 30 s
        assert 0.5 <= took < 10.0, took
        assert client._stream.broken and fake.unary_calls >= 1
        client.close()


def test_triton_stream_answers_and_checks_they_belong_to_the_request():
    from serving.client import TritonClient

    with _FakeTriton(
        lambda request, context: _stream_answer(request), lambda request, context: _answer(request)
    ) as fake:
        client = TritonClient(f"127.0.0.1:{fake.port}")
        for _ in range(4):
            assert client.infer_array(*_batch1())["probabilities"].shape == (1, 5)
        assert client.stream_answers == 4 and fake.unary_calls == 0
        client.close()

    def wrong_id(request, context):
        r = _stream_answer(request)
        r.infer_response.id = "someone else's"
        return r

    with _FakeTriton(wrong_id, lambda request, context: _answer(request)) as fake:
        client = TritonClient(f"127.0.0.1:{fake.port}")
        assert client.infer_array(*_batch1())["probabilities"].shape == (1, 5)
        assert client.stream_answers == 0 and fake.unary_calls == 1 and client._stream.broken
        client.close()


def _stream_answer(request):
    from tritonclient.grpc import service_pb2

    return service_pb2.ModelStreamInferResponse(infer_response=_answer(request))
