"""Grad-CAM (Selvaraju et al. 2017) over test captures: where along the wedge does the model look?

The target layer is the trunk's last convolution: 2-D for the image backbones (the map is upsampled to
the capture), 1-D for ``profile_cnn`` (the map lives on the wedge axis and is drawn over every row,
because the model only ever sees the row-averaged profile). The MLP has no convolution; for it the
map is gradient x input on the preprocessed capture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def last_conv(module: nn.Module) -> nn.Module | None:
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    return convs[-1] if convs else None


def grad_cam(
    model: nn.Module,
    raw: torch.Tensor,
    calibration: torch.Tensor,
    wedge_mm: torch.Tensor,
    class_index: int | None = None,
) -> tuple[np.ndarray, int, str]:
    """Heat map [H, W] in [0, 1] for one raw capture [C, H, W], its calibration [C, 2] and wedge size [1];
    returns (map, explained class, method)."""
    model.eval()
    layer = last_conv(model.trunk)
    saved: dict[str, torch.Tensor] = {}

    def keep(t: torch.Tensor) -> None:
        t.retain_grad()
        saved["act"] = t

    if layer is not None:  # the last convolution's output
        handle = layer.register_forward_hook(lambda _m, _inp, out: keep(out))
    else:  # no convolution: gradient x input, on what the trunk reads (the plate's attenuation image)
        handle = model.trunk.register_forward_pre_hook(lambda _m, inp: keep(inp[0]))
    try:
        with torch.enable_grad():
            x = raw[None].float().clone().requires_grad_(True)  # so the preprocessed input carries a gradient
            logits = model(x, calibration[None].float(), wedge_mm.reshape(1, 1).float())["logits"][0]
            c = int(logits.argmax()) if class_index is None else class_index
            logits[c].backward()
    finally:
        handle.remove()
    act, grad = saved["act"].detach()[0], saved["act"].grad[0]
    h, w = raw.shape[-2:]
    if layer is None:
        cam, method = (grad * act).sum(0).clamp(min=0), "gradient x input"
    else:
        weights = grad.flatten(1).mean(1)
        cam = (weights.view(-1, *[1] * (act.ndim - 1)) * act).sum(0).clamp(min=0)
        method = "Grad-CAM"
        if cam.ndim == 1:  # wedge-axis map from a 1-D trunk
            cam = F.interpolate(cam[None, None], size=w, mode="linear", align_corners=False)[0, 0].expand(h, w)
        else:
            cam = F.interpolate(cam[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    cam = cam.cpu().numpy()
    span = cam.max() - cam.min()
    return ((cam - cam.min()) / span if span > 0 else np.zeros_like(cam)), c, method


def save_gradcam(
    model: nn.Module,
    raw: torch.Tensor,
    calibration: torch.Tensor,
    wedge_mm: torch.Tensor,
    path: Path,
    title: str,
    class_names: list[str],
) -> Path:
    """Two panels: -ln T with the heat map over it, and the wedge profile with the map's column mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cam, c, method = grad_cam(model, raw, calibration, wedge_mm)
    with torch.no_grad():
        a = (
            model.plate_attenuation(raw[None].float(), calibration[None].float(), wedge_mm.reshape(1, 1).float())[0][
                0, 0
            ]
            .cpu()
            .numpy()
        )
    fig, (ax_i, ax_p) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_i.imshow(a, cmap="gray")
    ax_i.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    ax_i.set(title=f"{method}: {class_names[c]}", xlabel="wedge axis (column)", ylabel="row")
    ax_p.plot(
        np.sort(a, axis=0)[a.shape[0] // 4 : a.shape[0] - a.shape[0] // 4].mean(0),
        "k-",
        label="plate attenuation (interquartile row mean)",
    )
    ax_p.set(xlabel="wedge axis (column)", ylabel="-ln T minus the wedge alone")
    twin = ax_p.twinx()
    twin.fill_between(np.arange(cam.shape[1]), cam.mean(0), color="tab:red", alpha=0.3)
    twin.set(ylabel="attribution", ylim=(0, 1.05))
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
