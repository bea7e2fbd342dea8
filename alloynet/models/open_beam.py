"""The in-image open-beam reference: rows beside the plate and the wedge that see the open beam.

A capture is corrected with its session's dark and flat frames, so a tube whose output moves *after* the flat
was taken (within a session) shifts every -ln T by the same ln(output ratio), more than the alloys differ
(1 % of output is 0.01 in -ln T; the alloys differ by a few thousandths). When the rig images an open-beam
strip (``RigConfig.open_beam_rows``, recorded in every sidecar), the model reads the strip's transmission,
compares it with what the training captures' strips showed (``expected``, fitted before training), corrects
the capture's -ln T by the ratio and raises ``drift_in_session`` when the ratio departs from 1 by more than
``tolerance``: the session's flat is stale, take a new one. Without the strip (rows = 0) the capture passes
through unchanged and the flag stays 0: in-session drift cannot be seen in the image.

``GUARD_ROWS`` on each side of the strip's edge are used by neither side: the detector's PSF blurs the
plate into them.
"""

from __future__ import annotations

import torch
from torch import nn

from alloynet.data.transforms import wedge_profile
from alloynet.physics.simulator import OPEN_BEAM_GUARD_ROWS as GUARD_ROWS
from alloynet.physics.simulator import plate_row_start

MIN_REFERENCE_ROWS = 1


class OpenBeamReference(nn.Module):
    fit_stage = 0  # fitted before the input statistics (it changes what they see)

    def __init__(self, rows: int = 0, channels: int = 1):
        super().__init__()
        if rows and rows < GUARD_ROWS + MIN_REFERENCE_ROWS:
            raise ValueError(
                f"open_beam_rows: {rows} rows leave no reference once {GUARD_ROWS} rows at its edge "
                f"(blurred by the plate) are set aside; give at least {GUARD_ROWS + MIN_REFERENCE_ROWS}"
            )
        self.rows = int(rows)
        self.register_buffer("expected", torch.ones(channels))  # the strip's transmission in training
        self.register_buffer("tolerance", torch.tensor(float("inf")))  # |ratio - 1| that raises the flag
        self._acc: list[torch.Tensor] | None = None

    def transmission(self, a: torch.Tensor) -> torch.Tensor:
        """The strip's transmission per channel [B, C]: the interquartile mean of its pixels (a dead or hot
        pixel in it moves a plain mean by a few tenths of a percent)."""
        strip = torch.exp(-a[:, :, : self.rows - GUARD_ROWS, :]).flatten(2)  # [B, C, N]
        return wedge_profile(strip.unsqueeze(-1)).squeeze(-1)

    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-ln T [B, C, H, W] -> (the plate's rows, corrected by the strip [B, C, H', W]; drift flag [B])."""
        if not self.rows:
            return a, torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        t = self.transmission(a)
        if self._acc is not None:
            self._acc.append(t.detach().float())
        ratio = t / self.expected
        drift = ((ratio - 1.0).abs().amax(dim=1) > self.tolerance).to(a.dtype)
        plate = a[:, :, plate_row_start(self.rows) :, :] + torch.log(ratio)[:, :, None, None]
        return plate, drift

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints from before the strip existed have no entries for it: such a model has no strip (its
        buffers keep their defaults), as PyTorch's BatchNorm does for ``num_batches_tracked``."""
        if not self.rows:
            for name, buf in self.named_buffers(recurse=False):
                state_dict.setdefault(prefix + name, buf.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def begin_fit(self) -> None:
        self._acc = [] if self.rows else None

    def end_fit(self) -> None:
        if self._acc:
            self.expected.copy_(torch.cat(self._acc).median(dim=0).values)
        self._acc = None
