"""One capture's answer, and how a batch's answers and refusals are handed back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from serving.client.errors import ServingError


@dataclass
class Prediction:
    """One capture's answer (the fields of ``alloynet.contract.prediction``) and which server gave it."""

    alloy: str
    confidence: float
    probabilities: dict[str, float]
    prediction_set: list[str]
    group: str
    group_probability: float
    thickness_mm: float
    absorption: dict[str, float]
    flags: list[str]
    status: str = "ok"  # contract.STATUSES: an answered item's status (e.g. calibration_missing)
    status_message: str = ""  # its words, where the status is not "ok"
    server: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def finish(results: list, errors: str) -> list:
    """A batch's results (a Prediction or an exception per capture) as ``errors`` asks: "return" them all, or
    "raise" the first exception, carrying every result in its ``.results``."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
    if errors == "raise":
        for r in results:
            if isinstance(r, ServingError):
                r.results = results
            if isinstance(r, Exception):
                raise r
    return results
