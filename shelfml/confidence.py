"""Confidence a catalog team can act on: per-level probabilities calibrated on validation, thresholds for a
target precision, back-off to the deepest trusted prefix, abstention.

The decode loop gives, per level, the probability of the predicted path through that level (exact under the
constrained model: the chain rule over its step probabilities). A :class:`LevelCalibration`, fitted on the
validation split at training time and stored in the checkpoint manifest (``calibration``), maps each level's
probability to the probability that the prefix is right (Platt scaling on the log-odds or isotonic regression,
whichever has the lower cross-validated Brier score), keeps a child's probability at most its parent's, and holds
per-level thresholds chosen so that the accepted prefixes reach the target precision on validation. Applying it
needs numpy only (the served model); fitting needs scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from shelfml.labels import Label

TARGET_PRECISION = 0.95
BINS = 10  # equal-width bins of the expected calibration error and the reliability diagram
_EPS = 1e-6


def prefix_correct(gold: Sequence[Label], pred: Sequence[Label], depth: int) -> np.ndarray:
    """[rows, depth] bool: is the predicted path right through each level (a short predicted path: through its
    deeper levels it is right only when it is the whole gold path)?"""
    out = np.zeros((len(gold), depth), dtype=bool)
    for r, (g, p) in enumerate(zip(gold, pred)):
        for i in range(depth):
            if i < len(p.path):
                out[r, i] = tuple(g.path[: i + 1]) == tuple(p.path[: i + 1])
            else:
                out[r, i] = tuple(g.path) == tuple(p.path)
    return out


def ece(prob: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the bin-weighted gap between mean confidence and accuracy."""
    prob, correct = np.asarray(prob, float), np.asarray(correct, float)
    which = np.minimum((prob * bins).astype(int), bins - 1)
    gaps = [abs(prob[which == k].mean() - correct[which == k].mean()) * (which == k).sum()
            for k in range(bins) if (which == k).any()]
    return float(sum(gaps) / max(len(prob), 1))


def brier(prob: np.ndarray, correct: np.ndarray) -> float:
    return float(np.mean((np.asarray(prob, float) - np.asarray(correct, float)) ** 2))


def reliability(prob: np.ndarray, correct: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per non-empty bin: its range, items, mean confidence and accuracy (the reliability diagram's points)."""
    prob, correct = np.asarray(prob, float), np.asarray(correct, float)
    which = np.minimum((prob * bins).astype(int), bins - 1)
    return [{"bin": [k / bins, (k + 1) / bins], "items": int((which == k).sum()),
             "confidence": float(prob[which == k].mean()), "accuracy": float(correct[which == k].mean())}
            for k in range(bins) if (which == k).any()]


def threshold_for_precision(prob: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest threshold whose accepted rows (probability >= it) reach ``target`` precision: the most
    coverage at that precision; 0 when every row together does (nothing is held back), 1.0 when no threshold
    does (then only rows at probability 1 are accepted)."""
    prob, correct = np.asarray(prob, float), np.asarray(correct, bool)
    if correct.mean() >= target:
        return 0.0
    order = np.argsort(-prob, kind="stable")
    values, hits = prob[order], np.cumsum(correct[order])
    last = np.r_[values[1:] != values[:-1], True]  # the last row of each run of equal values
    counts = np.arange(1, len(values) + 1)
    ok = last & (hits >= target * counts)
    return float(values[np.nonzero(ok)[0][-1]]) if ok.any() else 1.0


def coverage_precision(prob: np.ndarray, correct: np.ndarray, threshold: float) -> dict:
    keep = np.asarray(prob) >= threshold
    return {"threshold": float(threshold), "coverage": float(keep.mean()),
            "precision": float(np.asarray(correct)[keep].mean()) if keep.any() else None}


def coverage_at_precision(prob: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The largest share of rows that can be accepted, most probable first, at ``target`` precision."""
    t = threshold_for_precision(prob, correct, target)
    keep = np.asarray(prob) >= t
    return float(keep.mean()) if keep.any() and np.asarray(correct)[keep].mean() >= target else 0.0


@dataclass
class Calibrator:
    """One level's map from the model's probability to the probability of being right."""

    method: str  # "platt" (a sigmoid of a * logit(p) + b) or "isotonic" (piecewise linear through x -> y)
    params: dict

    def __call__(self, prob: np.ndarray) -> np.ndarray:
        prob = np.asarray(prob, float)
        if self.method == "platt":
            z = self.params["a"] * _logit(prob) + self.params["b"]
            return 1.0 / (1.0 + np.exp(-z))
        return np.interp(prob, self.params["x"], self.params["y"])

    @classmethod
    def fit(cls, prob: np.ndarray, correct: np.ndarray, method: str) -> "Calibrator":
        prob, correct = np.asarray(prob, float), np.asarray(correct, bool)
        if correct.all() or not correct.any():  # nothing to learn a slope from: the observed rate
            rate = float(correct.mean())
            return cls("isotonic", {"x": [0.0, 1.0], "y": [rate, rate]})
        if method == "platt":
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e6).fit(_logit(prob)[:, None], correct)
            return cls("platt", {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])})
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(prob, correct.astype(float))
        return cls("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})

    @classmethod
    def choose(cls, prob: np.ndarray, correct: np.ndarray, folds: int = 5, seed: int = 0) -> tuple["Calibrator", dict]:
        """Platt or isotonic, by the Brier score of each fitted on k-1 folds and scored on the k-th; refitted on
        all rows. Returns the calibrator and the cross-validated scores."""
        prob, correct = np.asarray(prob, float), np.asarray(correct, bool)
        fold = np.random.default_rng(seed).permutation(len(prob)) % folds
        scores = {}
        for method in ("platt", "isotonic"):
            out = np.zeros(len(prob))
            for k in range(folds):
                out[fold == k] = cls.fit(prob[fold != k], correct[fold != k], method)(prob[fold == k])
            scores[method] = brier(out, correct)
        best = min(scores, key=scores.get)
        return cls.fit(prob, correct, best), scores

    def to_dict(self) -> dict:
        return {"method": self.method, **self.params}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibrator":
        method = data["method"]
        if method not in ("platt", "isotonic"):
            raise ValueError(f"unknown calibration method {method!r}")
        return cls(method, {k: v for k, v in data.items() if k != "method"})


def _logit(prob: np.ndarray) -> np.ndarray:
    p = np.clip(prob, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def check_thresholds(thresholds: Sequence[float], levels: Sequence[str]) -> list[float]:
    """Thresholds as given by a person: one per level, each in 0..1 (ValueError naming the problem)."""
    values = [float(t) for t in thresholds]
    if len(values) != len(levels):
        raise ValueError(f"{len(values)} thresholds given for {len(levels)} levels ({', '.join(levels)}): one per level")
    bad = [t for t in values if not 0.0 <= t <= 1.0 or t != t]
    if bad:
        raise ValueError(f"thresholds must be within 0..1, got {bad}")
    return values


def parse_thresholds(text: str, levels: Sequence[str]) -> list[float]:
    """``"0.9,0.8,0.7"`` -> one threshold per level (ValueError naming the problem)."""
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"thresholds must be numbers separated by commas, one per level, got {text!r}") from None
    return check_thresholds(values, levels)


@dataclass
class Decision:
    probabilities: np.ndarray  # [rows, levels] calibrated
    backoff_depth: np.ndarray  # [rows] levels of the predicted path that meet their thresholds (0: none)
    abstain: np.ndarray  # [rows] the full predicted path does not meet its threshold


@dataclass
class LevelCalibration:
    levels: list[str]
    calibrators: list[Calibrator]
    thresholds: list[float]
    target_precision: float = TARGET_PRECISION

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """[rows, levels] model probabilities -> calibrated, a child never above its parent."""
        raw = np.asarray(raw, float).reshape(-1, len(self.levels))
        out = np.stack([c(raw[:, i]) for i, c in enumerate(self.calibrators)], axis=1)
        return np.minimum.accumulate(out, axis=1) if len(out) else out

    def decide(self, raw: np.ndarray, depths: Sequence[int], thresholds: Sequence[float] | None = None) -> Decision:
        """Calibrated probabilities, back-off depth and abstention of predicted paths of ``depths`` levels."""
        probs = self.apply(raw)
        limits = np.asarray(self.thresholds if thresholds is None else thresholds, float)
        meets = np.cumprod(probs >= limits, axis=1).astype(bool)  # this level and every level above it
        depths = np.asarray(depths, int)
        backoff = np.array([int(meets[r, : depths[r]].sum()) for r in range(len(probs))], dtype=int)
        return Decision(probs, backoff, backoff < depths)

    def to_dict(self) -> dict:
        return {"levels": self.levels, "target_precision": self.target_precision, "thresholds": self.thresholds,
                "calibrators": [c.to_dict() for c in self.calibrators]}

    @classmethod
    def from_dict(cls, data: dict, levels: Sequence[str]) -> "LevelCalibration":
        """The calibration a checkpoint records, refused when it is not for these levels or its thresholds are bad."""
        if list(data["levels"]) != list(levels):
            raise ValueError(f"the calibration is for levels {data['levels']}, the taxonomy has {list(levels)}")
        return cls(list(levels), [Calibrator.from_dict(c) for c in data["calibrators"]],
                   check_thresholds(data["thresholds"], levels), float(data["target_precision"]))

    @classmethod
    def fit(cls, raw: np.ndarray, correct: np.ndarray, levels: Sequence[str],
            target_precision: float = TARGET_PRECISION) -> tuple["LevelCalibration", dict]:
        """Fit on validation rows: [rows, levels] probabilities and prefix correctness; returns the calibration
        and a summary (method scores, ECE and Brier before/after, coverage at the thresholds) for the manifest."""
        if not 0.0 < target_precision < 1.0:
            raise ValueError(f"the target precision must be between 0 and 1, got {target_precision}")
        raw, correct = np.asarray(raw, float), np.asarray(correct, bool)
        chosen = [Calibrator.choose(raw[:, i], correct[:, i]) for i in range(len(levels))]
        calibration = cls(list(levels), [c for c, _ in chosen], [0.0] * len(levels), target_precision)
        probs = calibration.apply(raw)
        calibration.thresholds = [threshold_for_precision(probs[:, i], correct[:, i], target_precision)
                                  for i in range(len(levels))]
        summary = {"rows": int(len(raw)), "levels": {
            name: {"method": chosen[i][0].method, "cv_brier": chosen[i][1],
                   "ece_before": ece(raw[:, i], correct[:, i]), "ece_after": ece(probs[:, i], correct[:, i]),
                   **coverage_precision(probs[:, i], correct[:, i], calibration.thresholds[i])}
            for i, name in enumerate(levels)}}
        return calibration, summary


def identity(levels: Sequence[str]) -> LevelCalibration:
    """No calibration (a checkpoint trained before it): the model's probabilities, nothing abstains."""
    return LevelCalibration(list(levels), [Calibrator("isotonic", {"x": [0.0, 1.0], "y": [0.0, 1.0]})] * len(levels),
                            [0.0] * len(levels))


def decide(preds: Sequence, levels: Sequence[str], calibration: LevelCalibration | None = None,
           thresholds: Sequence[float] | None = None) -> Decision:
    """The decision for decoded predictions (:class:`shelfml.decoding.Prediction`): calibrated per-level
    probabilities, back-off and abstention at the calibration's thresholds or ``thresholds``."""
    calibration = calibration or identity(levels)
    raw = np.array([p.level_probs for p in preds], dtype=float).reshape(len(preds), len(levels))
    return calibration.decide(raw, [len(p.label.path) for p in preds], thresholds)


CURVE_PRECISIONS = (0.9, 0.95, 0.98, 0.99)


def confidence_metrics(raw: np.ndarray, correct: np.ndarray, levels: Sequence[str], depths: Sequence[int],
                       calibration: LevelCalibration | None = None) -> dict:
    """What ``shelfml evaluate`` reports of the probabilities of one model on labelled rows: per level, ECE and
    Brier score before/after calibration, coverage and precision at the calibration's thresholds, the coverage
    reachable at several precisions (most probable first), the reliability bins; the back-off and abstention rates;
    ``rows``: the calibrated probabilities and correctness per row (for plots, not for a metrics file)."""
    calibration = calibration or identity(levels)
    decision = calibration.decide(raw, depths)
    probs = decision.probabilities
    out = {"levels": {}, "target_precision": calibration.target_precision}
    for i, name in enumerate(levels):
        p, c = probs[:, i], correct[:, i]
        out["levels"][name] = {
            "accuracy": float(c.mean()), "ece_before": ece(raw[:, i], c), "ece_after": ece(p, c),
            "brier_before": brier(raw[:, i], c), "brier_after": brier(p, c),
            "at_threshold": coverage_precision(p, c, calibration.thresholds[i]),
            "coverage_at_precision": {f"{t:g}": coverage_at_precision(p, c, t) for t in CURVE_PRECISIONS},
            "reliability": reliability(p, c)}
    backoff = decision.backoff_depth
    rows = np.arange(len(probs))
    right = correct[rows, np.maximum(backoff, 1) - 1] & (backoff > 0)  # the back-off prefix is right
    out.update(backoff_answers=float((backoff > 0).mean()), abstain_rate=float(decision.abstain.mean()),
               backoff_precision=float(right.sum() / max((backoff > 0).sum(), 1)),
               mean_backoff_depth=float(backoff.mean()),
               rows={"probabilities": probs.tolist(), "correct": correct.tolist()})  # per row: for curves, popped
    return out
