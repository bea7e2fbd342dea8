"""TorchServe handler: raw 16-bit capture bytes in, alloy + probabilities + thickness + absorption out.

Request body (REST) or ``input["data"]`` (gRPC): a 16-bit PNG or TIFF capture (decoded by
``alloynet.captures.image.decode_image``), or a raw array as .npy bytes (uint16 or float32 [C, H, W]).
The model is the exported TorchScript graph, which preprocesses and checks the capture's values inside, so
this handler re-implements neither: it decodes, checks shapes and dtypes, and words the graph's status with the
contract's table. A bad request gets HTTP 400 (gRPC INVALID_ARGUMENT) with the reason and never takes the rest
of its batch, or the worker, down with it. The size a PNG/TIFF/.npy header declares is checked against the
model's input before decoding (a decompression bomb is refused for the cost of reading its header). The model's
description (``?customized=true``) is the contract's ``description``: names, groups, status codes, coverage.

TorchServe 0.12's unary gRPC path ignores a per-request status (GRPCJob.response), so over gRPC a
rejected capture comes back with status OK and ``{"error": {"code": 400, ...}}`` as its body; the client
(serving/client.py) reports it as INVALID_ARGUMENT (InvalidCaptureError), like Triton's.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

try:  # inside a .mar the extra files sit beside this one
    import alloynet_contract as contract
    from capture_checks import (
        NPY_MAGIC,
        CaptureInputError,
        check_calibration,
        check_capture,
        check_header,
        check_wedge,
        decode_npy,
    )
except ImportError:  # imported from the repository (unit tests)
    from alloynet import contract
    from serving.capture_checks import (
        NPY_MAGIC,
        CaptureInputError,
        check_calibration,
        check_capture,
        check_header,
        check_wedge,
        decode_npy,
    )

log = logging.getLogger(__name__)


class AlloyHandler(BaseHandler):
    """preprocess (decode + validate) -> inference (TorchScript graph) -> postprocess (JSON per request)."""

    def __init__(self):
        super().__init__()
        self.meta: dict = {}
        self.errors: dict[int, dict] = {}

    def initialize(self, context) -> None:
        cfg = (getattr(context, "model_yaml_config", None) or {}).get("handler", {}) or {}
        torch.set_num_threads(int(cfg.get("threads", os.environ.get("ALLOYNET_TORCH_THREADS", 1))))
        super().initialize(context)
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, contract.META_FILE)) as f:
            self.meta = json.load(f)
        version = self.meta.get("contract_version")
        if version != contract.VERSION:
            raise RuntimeError(
                f"{contract.META_FILE}: the model was exported for contract version {version}; this "
                f"handler speaks version {contract.VERSION}: export the model again"
            )
        self.shape = (int(self.meta["channels"]), int(self.meta["height"]), int(self.meta["width"]))
        self.class_names = list(self.meta["class_names"])
        self.class_groups = list(self.meta.get("class_groups") or []) or None
        self.max_adu = float(self.meta.get("max_adu", contract.MAX_ADU))

    def _load_torchscript_model(self, model_pt_path):
        with warnings.catch_warnings():  # torch.jit is deprecated upstream but is what TorchServe 0.12 loads
            warnings.filterwarnings("ignore", category=FutureWarning)
            return torch.jit.load(model_pt_path, map_location=self.device)

    # -- preprocess ---------------------------------------------------------------------------------
    def decode(self, row: Any) -> np.ndarray:
        data = row.get("data", row.get("body")) if isinstance(row, dict) else row
        if isinstance(data, str):
            data = data.encode("latin-1")
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise CaptureInputError(
                "image", f"send the capture as bytes (16-bit PNG/TIFF or .npy), got {type(data).__name__}"
            )
        # The size the header declares is checked before anything is decoded: a 200 KB PNG can claim
        # 10000 x 10000 px and would cost the worker over a gigabyte to decode.
        check_header(data, self.shape)
        if data.startswith(NPY_MAGIC):
            arr = decode_npy(data)
        else:
            from alloynet.captures.image import decode_image

            arr = decode_image(data, where="request")
        return check_capture(arr, self.shape)

    def calibration(self, row: Any) -> np.ndarray:
        """The capture's calibration from the request: ``calibration`` (JSON [[dark, flat], ...] per channel)
        or ``sidecar`` (the capture's JSON sidecar); neither: zeros (the model flags calibration_missing)."""
        if not isinstance(row, dict):
            return check_calibration(None, self.shape[0])
        raw = row.get(contract.CALIBRATION_NAME)
        sidecar = row.get("sidecar")
        try:
            if raw is not None:
                return check_calibration(json.loads(bytes(raw)), self.shape[0])
            if sidecar is not None:
                cal = json.loads(bytes(sidecar))["calibration"]
                return check_calibration(list(zip(cal["dark_adu"], cal["flat_adu"], strict=True)), self.shape[0])
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, CaptureInputError):
                raise
            raise CaptureInputError(contract.CALIBRATION_NAME, f"not readable as calibration levels ({exc})") from None
        return check_calibration(None, self.shape[0])

    def wedge(self, row: Any) -> np.ndarray:
        """The capture's wedge size: ``wedge_mm`` (JSON number) or the sidecar's rig.wedge_mm; else zeros."""
        if not isinstance(row, dict):
            return check_wedge(None)
        try:
            if row.get(contract.WEDGE_NAME) is not None:
                return check_wedge(json.loads(bytes(row[contract.WEDGE_NAME])))
            if row.get("sidecar") is not None:
                return check_wedge(json.loads(bytes(row["sidecar"]))["rig"]["wedge_mm"])
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, CaptureInputError):
                raise
            raise CaptureInputError(contract.WEDGE_NAME, f"not readable as a wedge size in mm ({exc})") from None
        return check_wedge(None)

    def preprocess(self, data: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        self.errors, images, cals, wedges = {}, [], [], []
        for i, row in enumerate(data):
            try:
                image, cal, wedge = self.decode(row), self.calibration(row), self.wedge(row)
                images.append(image)
                cals.append(cal)
                wedges.append(wedge)
            except ValueError as exc:  # CaptureInputError and alloynet's CaptureError are both ValueErrors
                field = getattr(exc, "field", "image")
                message = getattr(exc, "message", str(exc))
                self.errors[i] = {"error": {"code": 400, "field": field, "message": message}}
        return (
            (torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(cals)), torch.from_numpy(np.stack(wedges)))
            if images
            else None
        )

    # -- inference ----------------------------------------------------------------------------------
    def inference(self, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, *args, **kwargs):
        if data is None:
            return None
        with torch.inference_mode():
            outs = self.model(*(t.to(self.device) for t in data))
        return {name: t.cpu().numpy() for name, t in zip(contract.OUTPUT_NAMES, outs, strict=True)}

    # -- postprocess --------------------------------------------------------------------------------
    def postprocess(self, outputs) -> list:
        n = len(self.errors) + (0 if outputs is None else len(outputs[contract.OUTPUT_NAMES[0]]))
        results, j = [], 0
        for i in range(n):
            if i in self.errors:
                err = self.errors[i]["error"]
                if getattr(self, "context", None) is not None:
                    self.context.set_response_status(400, f"{err['field']}: {err['message']}", idx=i)
                results.append(self.errors[i])
                continue
            refused = contract.refusal(outputs, j, self.max_adu)
            if refused is not None:
                if getattr(self, "context", None) is not None:
                    self.context.set_response_status(400, f"{refused['field']}: {refused['message']}", idx=i)
                results.append({"error": {"code": 400, **refused}})
            else:
                results.append(contract.prediction(outputs, j, self.class_names, self.class_groups))
            j += 1
        return results

    def describe_handle(self) -> dict:
        return contract.description(
            self.class_names, self.class_groups or [], float(self.meta.get("coverage") or 0.0), self.max_adu
        )
