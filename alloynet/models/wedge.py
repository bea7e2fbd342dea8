"""The wedge's own attenuation, computed inside the model for each capture's wedge size.

-ln T of a capture is the wedge's attenuation plus the plate's (plus the beam hardening that couples them);
the alloy is in the plate's part, a few tenths of a percent of the total. Subtracting the wedge alone,
computed from the rig's tube spectrum and detector response for the capture's own wedge size, leaves the
plate's attenuation along the wedge (what the models read) and puts captures of every wedge size on one
footing, an unseen size included. Per column x: w(x) = -ln sum_E q(E) exp(-mu_w(E) d(x)), with q the
energy-integrating detector's weight of each energy in the open beam, mu_w the wedge material's attenuation
and d(x) the wedge thickness under the column (a plate-only strip of ``margin_px`` columns, then a linear
ramp from ``wedge_min_mm`` to the capture's ``wedge_mm``, exactly as the simulator lays it out).

Buffers only (a few hundred numbers): traced into every exported graph. What the nominal spectrum gets wrong
for a real rig (scatter, the true spectrum) is a smooth offset per wedge size, which training absorbs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from alloynet.physics.simulator import RigConfig
from alloynet.physics.spectrum import detected_quanta, tube_spectrum
from alloynet.physics.transmission import wedge_attenuation


class WedgeReference(nn.Module):
    def __init__(self, rig: RigConfig | None = None):
        super().__init__()
        rig = rig or RigConfig()
        weights, mus = [], []
        for kvp in rig.kvp:
            s = tube_spectrum(kvp, rig.anode_angle_deg, rig.filtration_mm_al, rig.dk_kev)
            q = detected_quanta(s, rig.csi_mm) * s.energies_kev
            weights.append(q / q.sum())
            mus.append(wedge_attenuation(s.energies_kev, rig.wedge_material))
        e = max(len(w) for w in weights)
        pad = lambda v: np.pad(v, (0, e - len(v)))  # noqa: E731  (a zero weight adds nothing)
        self.register_buffer("weight", torch.tensor(np.stack([pad(w) for w in weights]), dtype=torch.float32))
        self.register_buffer("mu", torch.tensor(np.stack([pad(m) for m in mus]), dtype=torch.float32))  # 1/cm
        self.register_buffer("default_wedge_mm", torch.tensor(float(rig.wedge_mm)))
        self.register_buffer("wedge_min_mm", torch.tensor(float(rig.wedge_min_mm)))
        self.margin_px = int(rig.wedge_margin_px)

    def forward(self, wedge_mm: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(w [B, C, width] = -ln T of the wedge alone per column, wedge size not known [B] as 0/1)."""
        wmm = wedge_mm.float().reshape(-1)
        missing = wmm <= 0
        wmm = torch.where(missing, self.default_wedge_mm.expand_as(wmm), wmm)
        margin = min(self.margin_px, width - 2)
        x = torch.arange(width, dtype=torch.float32, device=wmm.device)
        frac = torch.clamp((x - margin) / float(max(width - 1 - margin, 1)), 0.0, 1.0)
        ramp = (x >= margin).float()
        d_cm = (self.wedge_min_mm + (wmm[:, None] - self.wedge_min_mm) * frac[None]) * ramp[None] / 10.0  # [B, W]
        att = torch.exp(-self.mu[None, :, None, :] * d_cm[:, None, :, None])  # [B, C, W, E]
        w = -torch.log((att * self.weight[None, :, None, :]).sum(-1))
        return w, missing.float()
