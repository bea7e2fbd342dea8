"""Triton Python-backend model: the exported ONNX graph run with ONNX Runtime, for CPU-only servers.

Copied into ``<repository>/<name>/1/`` by ``serving.triton.repository.build_repository`` together with
``model.onnx``, ``export.json``, ``capture_checks.py`` and the contract (``alloynet_contract.py``). Triton
itself rejects a wrong dtype or shape before a request reaches this file; here every capture of a request
is checked (NaN/infinite or out-of-range pixels, calibration levels, wedge size) and a request with bad
ones is answered with INVALID_ARG naming each of them ("item 3: image: ..."), on its own: the other
requests the dynamic batcher put in the same batch are run. (One
Triton request is answered as a whole; the client sends the good captures of a rejected multi-capture
request again, so callers get per-capture errors.)
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import alloynet_contract as contract  # noqa: E402
from capture_checks import (MAX_WEDGE_MM, CaptureInputError, check_calibration, check_capture,  # noqa: E402
                            check_wedge)


def _invalid(message):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, contract.META_FILE)) as f:
            self.meta = json.load(f)
        self.shape = (int(self.meta["channels"]), int(self.meta["height"]), int(self.meta["width"]))
        self.max_adu = float(self.meta.get("max_adu", 65535.0))
        params = json.loads(args["model_config"]).get("parameters", {})
        threads = int(params.get("intra_op_threads", {}).get("string_value", "1"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input_name = contract.INPUT_NAME
        self.calibration_name = contract.CALIBRATION_NAME
        self.wedge_name = contract.WEDGE_NAME
        self.output_names = list(contract.OUTPUT_NAMES)

    def _all_good(self, images, cal, wedge) -> bool:
        """Every capture (calibration, wedge size) of a request as the model takes it: float32 [B, C, H, W] in the
        detector range (a NaN fails both comparisons), levels finite in [0, max ADU], wedge sizes in [0, MAX_WEDGE_MM] mm.
        Otherwise each is checked on its own (check_capture/check_calibration/check_wedge) so the answer names
        what is wrong."""
        if images.dtype != np.float32 or tuple(images.shape[1:]) != self.shape:
            return False
        if not ((images >= 0) & (images <= self.max_adu)).all():
            return False
        if cal is not None and not (cal.dtype == np.float32 and tuple(cal.shape[1:]) == (self.shape[0], 2)
                                    and bool(((cal >= 0) & (cal <= 65535.0)).all())):
            return False
        return wedge is None or (wedge.dtype == np.float32 and tuple(wedge.shape[1:]) == (1,)
                                 and bool(((wedge >= 0) & (wedge <= MAX_WEDGE_MM)).all()))

    def execute(self, requests):
        responses = [None] * len(requests)
        batches, owners = [], []
        for i, request in enumerate(requests):
            try:
                images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                if images.ndim != 4 or images.shape[0] == 0:
                    raise CaptureInputError("image.shape", f"expected [B, C, H, W] with B >= 1, got {list(images.shape)}")
                cal = pb_utils.get_input_tensor_by_name(request, self.calibration_name)  # optional inputs
                cal = cal.as_numpy() if cal is not None else None
                wedge = pb_utils.get_input_tensor_by_name(request, self.wedge_name)
                wedge = wedge.as_numpy() if wedge is not None else None
                for name, rows in ((self.calibration_name, cal), (self.wedge_name, wedge)):
                    if rows is not None and len(rows) != len(images):
                        raise CaptureInputError(name, f"{len(rows)} {name} rows for {len(images)} images")
                if self._all_good(images, cal, wedge):  # the usual case, checked in one pass over the request
                    batches.append((images,
                                    cal if cal is not None else np.zeros((len(images), self.shape[0], 2), np.float32),
                                    wedge if wedge is not None else np.zeros((len(images), 1), np.float32)))
                    owners.append(i)
                    continue
                cal = cal if cal is not None else [None] * len(images)
                wedge = wedge if wedge is not None else [None] * len(images)
                checked, problems = [], []
                for j, (img, c, w) in enumerate(zip(images, cal, wedge)):  # every item, so the answer names each bad one
                    try:
                        checked.append((check_capture(img, self.shape, self.max_adu),
                                        check_calibration(c, self.shape[0]), check_wedge(w)))
                    except CaptureInputError as exc:
                        if len(images) == 1:
                            raise
                        problems.append(f"item {j}: {exc}")
                if problems:
                    raise CaptureInputError("request", f"{len(problems)} of {len(images)} captures rejected: "
                                            + "; ".join(problems) + " (the other captures of this request were not run)")
                batches.append(tuple(np.stack([c[k] for c in checked]) for k in range(3)))
                owners.append(i)
            except CaptureInputError as exc:
                message = exc.message if exc.field == "request" else str(exc)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_invalid(message))
        if batches:
            sizes = [len(b[0]) for b in batches]
            feed = {name: np.concatenate([b[k] for b in batches]) if len(batches) > 1 else batches[0][k]
                    for k, name in enumerate((self.input_name, self.calibration_name, self.wedge_name))}
            try:
                outputs = self.session.run(self.output_names, feed)
            except Exception as exc:  # an ONNX Runtime failure answers these requests; the instance lives on
                for i in owners:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[],
                                                              error=pb_utils.TritonError(f"inference failed: {exc}"))
                return responses
            start = 0
            for i, n in zip(owners, sizes):
                tensors = [pb_utils.Tensor(name, out if len(owners) == 1 else np.ascontiguousarray(out[start:start + n]))
                           for name, out in zip(self.output_names, outputs)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += n
        return responses

    def finalize(self):
        self.session = None
