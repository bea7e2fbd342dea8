"""Honest answers: what a model says about a capture beyond its argmax, fitted on held-out data.

* Calibrated probabilities: temperature scaling (Guo et al. 2017), the one parameter fitted on the
  validation split by minimising its log-loss.
* A conformal prediction set (split conformal, score 1 - p_true on the calibrated probabilities): the set
  {k : p_k >= 1 - q} covers the true alloy with probability >= ``coverage`` on exchangeable data. The
  threshold q is a class-balanced quantile of the validation scores, because test sets (and the line) are
  balanced while training data are long-tailed. Where physics cannot tell 5083 from 6082 the set holds both.
* What they are fitted on (the recalibration set): the recalibration half of the validation split, and, when
  training mixes in simulated captures of the rig, a held-out set of them as well (``recalibration_set``):
  split conformal's threshold on ~130 captures is itself uncertain by +-0.02 in coverage, on 2,000 by +-0.005.
  The simulated ones join only where the real captures agree with them (their coverage under the joint fit is
  not significantly off the target): a simulator that does not describe the rig cannot move the answers.
* Captures sent without their levels (the wire's ``calibration``) or wedge size: the model's logits for them are
  less sure than they look (it has to assume the training levels), so they get their own temperature and
  conformal threshold, fitted the same way on the recalibration captures sent without their levels and wedge
  size (``fit_missing``).
  Until those are fitted such a capture is answered with every class equally likely and every class in its
  set: never a confident guess.
* Group probabilities: heavy (Cu/Zn-bearing) vs light, summed from the class probabilities.
* Flags: the levels' ones (``calibration_*``) come from ``Preprocess``; thickness outside the training range
  (the regression head's thickness beyond the range widened by 5 %, or the physics fit's posterior mass beyond
  the training prior's bounds above one half, ``alloynet.models.physics_prior``); features unlike every
  training class (class-conditional Gaussians with a shared covariance on a PCA projection of the trunk's
  features, Lee et al. 2018; flagged above the 99.5th percentile of the validation distances).

Every statistic is a buffer, so it is saved in checkpoints and traced into every exported graph. An Answer
that was never fitted is honest about it: temperature 1, the full set of classes, no out-of-envelope flags.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

OOD_QUANTILE = 0.995
AGREEMENT_P = 0.05  # simulated recalibration captures are dropped when the real ones disagree at this level
TIE = 1e-6  # of a conformal threshold: ties with the chosen score are in the set (``conformal_threshold``)
MIN_REAL = 10  # fewer real recalibration captures cannot tell whether simulated ones agree: not used
THICKNESS_MARGIN = 0.05
MAX_PROJECTION = 32
OUTSIDE_MASS = 0.5  # the physics fit's posterior mass beyond the training thicknesses that flags them


class Answer(nn.Module):
    def __init__(
        self, num_classes: int, feature_dim: int, groups: Sequence[int], num_groups: int = 2, coverage: float = 0.95
    ):
        super().__init__()
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
        p = min(feature_dim, MAX_PROJECTION)
        onehot = torch.zeros(num_classes, num_groups)
        onehot[torch.arange(num_classes), torch.as_tensor(list(groups))] = 1.0
        self.register_buffer("group_matrix", onehot)
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("qhat", torch.tensor(1.0))  # 1 - p threshold; 1 = every class
        self.register_buffer("coverage", torch.tensor(float(coverage)))
        self.register_buffer("thickness_range", torch.tensor([0.0, float("inf")]))
        self.register_buffer("feat_mean", torch.zeros(feature_dim))
        self.register_buffer("feat_proj", torch.zeros(feature_dim, p))
        self.register_buffer("class_means", torch.zeros(num_classes, p))
        self.register_buffer("precision", torch.eye(p))
        self.register_buffer("ood_threshold", torch.tensor(float("inf")))
        # 0 = not fitted: captures without levels are answered uniformly (see the module's docstring)
        self.register_buffer("temperature_missing", torch.tensor(0.0))
        self.register_buffer("qhat_missing", torch.tensor(1.0))

    _OPTIONAL_BUFFERS = ("temperature_missing", "qhat_missing")

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # checkpoints written before these buffers existed load as "not fitted"
        for name in self._OPTIONAL_BUFFERS:
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float() / self.temperature, dim=-1)

    def answer_sets(self, logits: torch.Tensor, calibration_missing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities [B, K], prediction set [B, K]): items whose levels or wedge size were not sent
        (``calibration_missing`` [B] as 0/1) get the temperature and threshold fitted for such captures, or the
        uniform answer and every class while those are not fitted."""
        probs = self.probabilities(logits)
        pset = (probs >= 1.0 - self.qhat).float()
        fitted = self.temperature_missing > 0
        t_missing = torch.where(fitted, self.temperature_missing, torch.ones_like(self.temperature_missing))
        p_missing = torch.softmax(logits.float() / t_missing, dim=-1)
        p_missing = torch.where(fitted, p_missing, torch.full_like(p_missing, 1.0 / p_missing.shape[-1]))
        s_missing = (p_missing >= 1.0 - self.qhat_missing).float()
        missing = calibration_missing.reshape(-1, 1) > 0.5
        return torch.where(missing, p_missing, probs), torch.where(missing, s_missing, pset)

    def ood_distance(self, features: torch.Tensor) -> torch.Tensor:
        """Smallest Mahalanobis distance (squared) of the projected features to a training class mean."""
        z = (features.float() - self.feat_mean) @ self.feat_proj  # [B, P]
        d = z[:, None, :] - self.class_means[None]  # [B, K, P]
        return torch.einsum("bkp,pq,bkq->bk", d, self.precision, d).min(dim=1).values

    def forward(
        self,
        logits: torch.Tensor,
        thickness_mm: torch.Tensor,
        features: torch.Tensor,
        calibration_missing: torch.Tensor,
        calibration_out: torch.Tensor,
        drift: torch.Tensor,
        thickness_outside: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probabilities [B, K], prediction_set [B, K], group_probabilities [B, G], flags [B, 5]).
        ``thickness_outside``: the physics fit's posterior mass beyond the training thicknesses [B], if the model
        has the fit; above OUTSIDE_MASS the thickness is out of range whatever the regression head says (the
        head cannot say it: it saturates inside its training range)."""
        probs, pset = self.answer_sets(logits, calibration_missing)
        # a sum of products, not a matmul: under CUDA autocast a matmul would come out in bf16
        groups = (probs[:, :, None] * self.group_matrix[None]).sum(dim=1)
        thick = (thickness_mm < self.thickness_range[0]) | (thickness_mm > self.thickness_range[1])
        if thickness_outside is not None:
            thick = thick | (thickness_outside > OUTSIDE_MASS)
        thick = thick.float()
        ood = (self.ood_distance(features) > self.ood_threshold).float()
        flags = torch.stack([calibration_missing, calibration_out, thick, ood, drift], dim=1)
        return probs, pset, groups, flags

    # -- fitting on held-out data (host side) -----------------------------------------------------------
    @torch.no_grad()
    def fit(
        self,
        val_logits: np.ndarray,
        val_labels: np.ndarray,
        train_features: np.ndarray,
        train_labels: np.ndarray,
        val_features: np.ndarray,
        train_thickness: np.ndarray,
        coverage: float | None = None,
    ) -> dict:
        """Fit temperature, conformal threshold, feature statistics and the thickness range; returns a summary."""
        if coverage is not None:
            self.coverage.fill_(float(coverage))
        self.temperature.fill_(fit_temperature(val_logits, val_labels))
        # fitted on the host, whatever device the model trained on (its buffers may live on a GPU)
        probs = torch.softmax(torch.as_tensor(val_logits, dtype=torch.float32) / float(self.temperature), -1).numpy()
        self.qhat.fill_(conformal_threshold(probs, val_labels, float(self.coverage)))
        t = np.asarray(train_thickness, float)
        t = t[np.isfinite(t)]
        if len(t):
            lo, hi = t.min() * (1 - THICKNESS_MARGIN), t.max() * (1 + THICKNESS_MARGIN)
            self.thickness_range.copy_(torch.tensor([lo, hi]))
        self._fit_features(np.asarray(train_features, np.float64), np.asarray(train_labels), np.asarray(val_features))
        return {
            "temperature": float(self.temperature),
            "qhat": float(self.qhat),
            "coverage": float(self.coverage),
            "thickness_range": self.thickness_range.tolist(),
            "ood_threshold": float(self.ood_threshold),
        }

    @torch.no_grad()
    def fit_missing(self, logits: np.ndarray, labels: np.ndarray, min_captures: int = MIN_REAL) -> dict:
        """Fit the temperature and conformal threshold of captures sent without levels or wedge size, on
        held-out logits of captures from sessions the model has not seen (``OtherSession``); returns a
        summary. With fewer than ``min_captures`` a temperature would be a guess: such captures stay answered
        uniformly. The temperature is never below that of captures with levels: a capture without its levels is
        never answered more sharply than one with them."""
        if len(labels) < min_captures:
            return {
                "fitted": False,
                "captures": int(len(labels)),
                "reason": f"fewer than {min_captures} held-out captures: answered uniformly",
            }
        t = max(fit_temperature(logits, labels), float(self.temperature))
        probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float32) / t, -1).numpy()
        self.temperature_missing.fill_(t)
        self.qhat_missing.fill_(conformal_threshold(probs, labels, float(self.coverage)))
        covered = probs[np.arange(len(labels)), np.asarray(labels, int)] >= 1.0 - float(self.qhat_missing)
        return {
            "fitted": True,
            "captures": int(len(labels)),
            "temperature": t,
            "qhat": float(self.qhat_missing),
            "coverage": float(covered.mean()),
            "set_size": float((probs >= 1.0 - float(self.qhat_missing)).sum(1).mean()),
        }

    def _fit_features(self, f: np.ndarray, y: np.ndarray, f_val: np.ndarray) -> None:
        mean = f.mean(0)
        centred = f - mean
        p = self.feat_proj.shape[1]
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        proj = vt[:p].T if vt.shape[0] >= p else np.pad(vt.T, ((0, 0), (0, p - vt.shape[0])))
        z = centred @ proj
        means = np.zeros((self.class_means.shape[0], p))
        resid = []
        for k in range(len(means)):
            if (y == k).any():
                means[k] = z[y == k].mean(0)
                resid.append(z[y == k] - means[k])
            else:
                means[k] = np.inf  # a class never seen in training is never the nearest
        cov = np.atleast_2d(np.cov(np.concatenate(resid), rowvar=False))
        cov += (1e-6 * np.trace(cov) / p + 1e-12) * np.eye(p)  # a projection may have near-empty directions
        self.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feat_proj.copy_(torch.as_tensor(proj, dtype=torch.float32))
        self.class_means.copy_(torch.as_tensor(np.where(np.isfinite(means), means, 1e6), dtype=torch.float32))
        self.precision.copy_(torch.as_tensor(np.linalg.inv(cov), dtype=torch.float32))
        f_val = torch.as_tensor(f_val, dtype=torch.float32, device=self.feat_mean.device)
        self.ood_threshold.fill_(float(np.quantile(self.ood_distance(f_val).cpu().numpy(), OOD_QUANTILE)))


class WithheldLevels(nn.Module):
    """A model as it answers captures sent without their levels and wedge size (both zeros): what
    ``Answer.fit_missing`` is fitted on. Forwards (raw, calibration, wedge_mm) like the model it wraps."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, raw: torch.Tensor, calibration: torch.Tensor, wedge_mm: torch.Tensor):
        return self.model(raw, torch.zeros_like(calibration), torch.zeros_like(wedge_mm))


# The prior on how far a session's flat-minus-dark span lies from another's (log sd): tube output drifts by up to
# about a percent between sessions, more than the alloys differ in -ln T. A store of a few sessions can show
# less than a line will see, and answers to captures sent without levels fitted on that spread alone
# under-cover new sessions; a fixed 1 % over-covers rigs whose sessions move less (docs/benchmarks.md, "Captures
# sent without calibration"). Weighed as one session, the prior carries a store of few sessions and the store's
# own spread takes over as its sessions accrue.
SESSION_SPREAD_PRIOR = 0.01
SESSION_PRIOR_WEIGHT = 1.0


class OtherSession(nn.Module):
    """A model as it answers a capture sent without its levels, from a session it has not seen: what
    ``Answer.fit_missing`` is fitted on. Sent no levels, the model uses the training median's, and its error is
    the ratio of the capture's own span to that; here each capture keeps its dark level and its span is scaled by
    exp(delta), delta ~ N(0, ``log_sd``^2) drawn per capture (seeded, in the order the batches come), and the wedge
    size is withheld. Forwards (raw, calibration, wedge_mm) like the model it wraps."""

    def __init__(self, model: nn.Module, log_sd: float, seed: int):
        super().__init__()
        self.model, self.log_sd = model, float(log_sd)
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, raw: torch.Tensor, calibration: torch.Tensor, wedge_mm: torch.Tensor):
        cal = calibration.float()
        delta = torch.randn(cal.shape[0], generator=self.generator) * self.log_sd
        dark = cal[..., 0]
        span = (cal[..., 1] - dark) * torch.exp(delta).to(cal.device)[:, None]
        shifted = torch.stack([dark, dark + span], dim=-1).to(calibration.dtype)
        return self.model(raw, shifted, torch.zeros_like(wedge_mm))


def session_spread(dark: np.ndarray, flat: np.ndarray) -> float:
    """The spread ``OtherSession`` draws from: how far (log sd) a new session's flat-minus-dark span may lie from
    the training captures' median. Sessions are the distinct (dark, flat) levels of the captures; the variance of
    their log spans (mean over channels, n - 1 degrees of freedom) is pooled with ``SESSION_SPREAD_PRIOR``^2 worth
    ``SESSION_PRIOR_WEIGHT`` degrees of freedom (the posterior mean of a scaled inverse chi-square), then widened
    by 1 + 1/n for a new session against a centre estimated from n."""
    dark, flat = np.atleast_1d(np.asarray(dark, float)), np.atleast_1d(np.asarray(flat, float))
    dark, flat = dark.reshape(len(dark), -1), flat.reshape(len(flat), -1)
    ok = ((flat - dark) > 0).all(axis=1)
    sessions = np.unique(np.concatenate([dark[ok], flat[ok]], axis=1), axis=0)
    n = len(sessions)
    if n == 0:
        return SESSION_SPREAD_PRIOR
    c = dark.shape[1]
    log_span = np.log(sessions[:, c:] - sessions[:, :c])
    ss = float(((log_span - log_span.mean(axis=0)) ** 2).sum(axis=0).mean())
    var = (SESSION_PRIOR_WEIGHT * SESSION_SPREAD_PRIOR**2 + ss) / (SESSION_PRIOR_WEIGHT + n - 1)
    return float(np.sqrt(var * (1.0 + 1.0 / n)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the log-loss of softmax(logits / T) (1-D, bounded search in log T)."""
    from scipy import optimize

    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, int)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(1, keepdims=True)
        return float(-(s[np.arange(len(y)), y] - np.log(np.exp(s).sum(1))).mean())

    res = optimize.minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def conformal_threshold(probs: np.ndarray, labels: np.ndarray, coverage: float) -> float:
    """Split-conformal threshold q on the score 1 - p_true, as a class-balanced quantile: each class weighs
    the same whatever its count in the validation split. With n scores the level is lifted to
    ceil((n + 1) coverage) / n (the finite-sample correction); q = 1 (every class) if that exceeds 1."""
    y = np.asarray(labels, int)
    scores = 1.0 - np.asarray(probs)[np.arange(len(y)), y]
    counts = np.bincount(y)
    w = 1.0 / counts[y]
    order = np.argsort(scores)
    cdf = np.cumsum(w[order]) / w.sum()
    n = len(y)
    level = np.ceil((n + 1) * coverage) / n
    if level > 1:
        return 1.0
    # lifted by TIE so that scores tied with the chosen one stay in: a set holds p >= 1 - q, and with float32
    # probabilities 1 - (1 - p) can round below p (captures whose true class sat at the logits' floor were
    # dropped from their own sets: coverage 0.61 where the quantile said 0.99)
    return min(1.0, float(scores[order][min(np.searchsorted(cdf, level - 1e-12), n - 1)]) + TIE)


def recalibration_set(
    real_logits: np.ndarray,
    real_labels: np.ndarray,
    sim_logits: np.ndarray | None,
    sim_labels: np.ndarray | None,
    coverage: float,
    min_real: int = MIN_REAL,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The recalibration set, the captures the temperature and the conformal threshold are fitted on: the real ones,
    joined by the held-out simulated ones when the real ones agree with the joint fit (a two-sided binomial
    test of their coverage against ``coverage`` at ``AGREEMENT_P``; with fewer than ``min_real`` real captures
    the simulated ones are not used). Returns (logits, labels, a summary of the choice)."""
    from scipy import special, stats

    real_logits, real_labels = np.asarray(real_logits, np.float64), np.asarray(real_labels, int)
    info = {"real": int(len(real_labels)), "simulated": 0}
    if sim_logits is None or not len(sim_labels) or len(real_labels) < min_real:
        return real_logits, real_labels, info
    logits = np.concatenate([real_logits, np.asarray(sim_logits, np.float64)])
    labels = np.concatenate([real_labels, np.asarray(sim_labels, int)])
    t = fit_temperature(logits, labels)
    q = conformal_threshold(special.softmax(logits / t, axis=1), labels, coverage)
    p_real = special.softmax(real_logits / t, axis=1)[np.arange(len(real_labels)), real_labels]
    covered = int((p_real >= 1.0 - q).sum())
    p = float(stats.binomtest(covered, len(real_labels), coverage).pvalue)
    info.update(real_coverage=covered / len(real_labels), agreement_p=p)
    if p < AGREEMENT_P:
        return real_logits, real_labels, info
    info["simulated"] = int(len(sim_labels))
    return logits, labels, info
