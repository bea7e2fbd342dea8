"""Where Triton's batch-1 overhead goes: in-process ONNX Runtime, building the request, a gRPC call that
runs no model (is_server_live: the round trip's floor), unary gRPC, a
bidirectional gRPC stream, unary gRPC from one kept protobuf request (no tritonclient objects per call),
alloynet's client over its kept stream (its default) and with unary calls, and Triton's own per-request
statistics (queue, input, compute, output).

    OMP_NUM_THREADS=1 .venv/bin/python bench/triton_breakdown.py /tmp/alloynet-triton-breakdown

Trains a tiny checkpoint (or reuses one under the folder), exports it, serves it with Triton (alloynet's backend +
ONNX Runtime, queue delay 0) and prints p50 latencies in ms, three rounds of 400 calls each.
"""

import json
import queue
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tritonclient.grpc as g

from alloynet.export import export_checkpoint, onnx_session
from infra import triton as tr_server
from serving.client import TritonClient
from serving.triton.repository import BatchingOptions, build_repository
from tests.helpers.serving import capture_inputs, train_tiny_checkpoint

tmp = Path(sys.argv[1])
tmp.mkdir(parents=True, exist_ok=True)
ckpt = next(tmp.glob("**/best.pt"), None) or train_tiny_checkpoint(tmp)
bundle = export_checkpoint(ckpt, tmp / "export", log=lambda *_: None)
x = capture_inputs(64, seed=11)
f32, cals, wedges = x["image"].astype(np.float32), x["calibration"], x["wedge_mm"]
sess = onnx_session(bundle.path("onnx"), threads=1)


def p50(fn, n=400):
    for i in range(20):
        fn(i)
    ts = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


ort = lambda i: sess.run(
    None, {"image": f32[i % 64][None], "calibration": cals[i % 64][None], "wedge_mm": wedges[i % 64][None]}
)


def inputs(i):
    a = g.InferInput("image", [1, *f32.shape[1:]], "FP32")
    a.set_data_from_numpy(f32[i % 64][None])
    b = g.InferInput("calibration", [1, *cals.shape[1:]], "FP32")
    b.set_data_from_numpy(np.ascontiguousarray(cals[i % 64][None]))
    c = g.InferInput("wedge_mm", [1, 1], "FP32")
    c.set_data_from_numpy(np.ascontiguousarray(wedges[i % 64][None]))
    return [a, b, c]


repo = build_repository(bundle.directory, tmp / "repo", opts=BatchingOptions(max_batch_size=32, max_queue_delay_us=0))
tr = tr_server.start(repo, tmp / "triton", models=["alloynet"])
try:
    cl = g.InferenceServerClient(tr.grpc_target)
    unary = lambda i: cl.infer("alloynet", inputs(i))
    live = lambda i: cl.is_server_live()  # the gRPC round trip with no inference: the floor of any call
    build = lambda i: inputs(i)
    q = queue.Queue()
    cl2 = g.InferenceServerClient(tr.grpc_target)
    cl2.start_stream(callback=lambda result, error: q.put((result, error)))

    def stream(i):
        cl2.async_stream_infer("alloynet", inputs(i))
        r, e = q.get()
        if e:
            raise e

    # the same request without tritonclient's per-call objects: one protobuf kept, its raw contents swapped
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(tr.grpc_target))
    req = service_pb2.ModelInferRequest(model_name="alloynet")
    for name, shape in (("image", [1, *f32.shape[1:]]), ("calibration", [1, *cals.shape[1:]]), ("wedge_mm", [1, 1])):
        t = req.inputs.add()
        t.name, t.datatype = name, "FP32"
        t.shape.extend(shape)

    def raw(i):
        del req.raw_input_contents[:]
        req.raw_input_contents.extend([f32[i % 64].tobytes(), cals[i % 64].tobytes(), wedges[i % 64].tobytes()])
        r = stub.ModelInfer(req, timeout=10)
        return {
            o.name: np.frombuffer(b, np.float32).reshape(list(o.shape))
            for o, b in zip(r.outputs, r.raw_output_contents)
        }

    def stats():
        s = cl.get_inference_statistics("alloynet", as_json=True)["model_stats"][0]["inference_stats"]
        return {k: (int(v.get("count", 0)), int(v.get("ns", 0))) for k, v in s.items()}

    ours, ours_unary = TritonClient(tr.grpc_target), TritonClient(tr.grpc_target, stream=False)
    client_stream = lambda i: ours.infer_array(f32[i % 64][None], cals[i % 64][None], wedges[i % 64][None])
    client_unary = lambda i: ours_unary.infer_array(f32[i % 64][None], cals[i % 64][None], wedges[i % 64][None])
    res = {}
    for _rnd in range(3):
        for name, fn in (
            ("ort", ort),
            ("client_build", build),
            ("live_rpc", live),
            ("unary", unary),
            ("raw", raw),
            ("stream", stream),
            ("client_stream", client_stream),
            ("client_unary", client_unary),
        ):
            s0 = stats() if name in ("unary", "raw", "stream", "client_stream", "client_unary") else None
            res.setdefault(name, []).append(p50(fn))
            if s0:
                s1 = stats()
                res.setdefault(name + "_server_us", []).append(
                    {
                        k: round((s1[k][1] - s0[k][1]) / max(1, s1[k][0] - s0[k][0]) / 1e3, 1)
                        for k in s1
                        if s1[k][0] > s0[k][0]
                    }
                )
    print(json.dumps(res, indent=1))
    cl2.stop_stream()
finally:
    tr_server.stop(tmp / "triton")
