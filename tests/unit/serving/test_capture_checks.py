"""The TorchServe handler's input checks (serving/capture_checks.py): a batch of no captures says so."""

from __future__ import annotations

import io

import numpy as np
import pytest

from serving.capture_checks import CaptureInputError, check_capture, check_header


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_a_batch_of_no_captures_is_refused_as_an_empty_batch():
    empty = np.zeros((0, 1, 64, 64), np.uint16)
    with pytest.raises(CaptureInputError) as exc:
        check_header(_npy(empty), (1, 64, 64))
    assert exc.value.field == "image" and exc.value.message == "empty batch (shape [0, 1, 64, 64])"
    with pytest.raises(CaptureInputError) as exc:
        check_capture(empty, (1, 64, 64))
    assert exc.value.message == "empty batch (shape [0, 1, 64, 64])"


def test_an_image_with_no_pixels_is_an_empty_array():
    with pytest.raises(CaptureInputError) as exc:
        check_header(_npy(np.zeros((64, 0), np.uint16)), (1, 64, 64))
    assert exc.value.message == "empty array (shape [1, 64, 0])"
