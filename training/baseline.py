"""The honest comparison: TF-IDF (word + char n-grams) with linear models, on the same split."""

from __future__ import annotations

import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from sklearn.pipeline import FeatureUnion
from sklearn.svm import LinearSVC

from shelfml.data import DataSpec, load_catalog, split_catalog
from shelfml.labels import Label, format_path
from shelfml.metrics import price_metrics, smape, tagger_metrics


def tfidf_features() -> FeatureUnion:
    return FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)),
    ])


def fit_path_classifier(train):
    """(TF-IDF features fitted on ``train``, its matrix, a LinearSVC over whole paths, path name -> path)."""
    features = tfidf_features()
    x_train = features.fit_transform(train.inputs())
    labels = train.labels()
    clf = LinearSVC(C=0.5).fit(x_train, [format_path(lab.path) for lab in labels])
    return features, x_train, clf, {format_path(lab.path): lab.path for lab in labels}


def baseline_tagger(spec: DataSpec, split_seed: int = 0) -> dict:
    """One classifier over whole paths (so predictions are always valid paths) and one over brands."""
    catalog = load_catalog(spec, task="tagger")
    parts, split = split_catalog(catalog, seed=split_seed)
    train, test = parts["train"], parts["test"]
    start = time.perf_counter()
    features, x_train, path_clf, paths = fit_path_classifier(train)
    brands = [lab.brand for lab in train.labels()]
    brand_clf = LinearSVC(C=0.5).fit(x_train, brands) if len(set(brands)) > 1 else None
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    x_test = features.transform(test.inputs())
    pred_paths = path_clf.predict(x_test)
    pred_brands = brand_clf.predict(x_test) if brand_clf is not None else [brands[0]] * len(test)
    seconds = time.perf_counter() - start
    preds = [Label(paths[p], b) for p, b in zip(pred_paths, pred_brands)]
    metrics = tagger_metrics(test.labels(), preds, catalog.taxonomy())
    metrics.update(model="tfidf-word1-2+char2-5 LinearSVC", split="test", source=catalog.source,
                   split_info=split.to_dict(), train_seconds=round(train_seconds, 2),
                   latency={"batch_size": len(test), "seconds": round(seconds, 3),
                            "ms_per_item": round(1000 * seconds / len(test), 3)})
    return metrics


def baseline_price(spec: DataSpec, split_seed: int = 0, alphas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)) -> dict:
    """Ridge regression on log1p(price) over the same TF-IDF features; alpha chosen on validation SMAPE."""
    from shelfml.images import ImageStore
    from shelfml.price import from_log

    catalog = load_catalog(spec, task="price")
    parts, split = split_catalog(catalog, seed=split_seed)
    train, val, test = parts["train"], parts["validation"], parts["test"]
    start = time.perf_counter()
    features = tfidf_features()
    x_train = features.fit_transform(train.inputs())
    x_val = features.transform(val.inputs())
    y_train = np.log1p(train.frame["price"].to_numpy())
    fits = {a: Ridge(alpha=a).fit(x_train, y_train) for a in alphas}
    val_smape = {a: smape(val.frame["price"], from_log(m.predict(x_val))) for a, m in fits.items()}
    alpha = min(val_smape, key=val_smape.get)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    pred = from_log(fits[alpha].predict(features.transform(test.inputs())))
    seconds = time.perf_counter() - start
    gold = test.frame["price"].to_numpy()
    metrics = price_metrics(gold, pred)
    store = ImageStore()
    with_image = np.array([store.status(p) == "ok" for p in test.frame["image"]])
    if with_image.any():  # the rows an image branch could use, for comparison with it
        metrics["with_image"] = {k: v for k, v in price_metrics(gold[with_image], pred[with_image]).items()
                                 if k != "smape_by_decile"}
    metrics.update(model=f"tfidf-word1-2+char2-5 Ridge(alpha={alpha}) on log1p(price)", split="test",
                   source=catalog.source, skipped=catalog.skipped, split_info=split.to_dict(),
                   validation_smape={str(a): round(v, 4) for a, v in val_smape.items()},
                   train_seconds=round(train_seconds, 2),
                   latency={"batch_size": len(test), "seconds": round(seconds, 3),
                            "ms_per_item": round(1000 * seconds / len(test), 3)})
    return metrics


def _level_probabilities(probs: np.ndarray, class_paths: list[tuple[str, ...]], depth: int) -> np.ndarray:
    """[rows, depth]: per level, the probability of the predicted (most probable) class's path through that level,
    the sum over the classes that share it (a short path's deeper levels: that path alone)."""
    best = probs.argmax(axis=1)
    out = np.zeros((len(probs), depth))
    for i in range(depth):
        keys = [p[: i + 1] if i < len(p) else (*p, "") for p in class_paths]
        ids = {k: n for n, k in enumerate(dict.fromkeys(keys))}
        member = np.zeros((len(class_paths), len(ids)))
        member[np.arange(len(keys)), [ids[k] for k in keys]] = 1.0
        by_prefix = probs @ member
        own = np.array([ids[keys[j]] for j in best])
        out[:, i] = by_prefix[np.arange(len(probs)), own]
    return out


def _softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = scores / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def baseline_confidence(train, validation, test, target_precision: float,
                        temperatures: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)) -> dict:
    """The TF-IDF + LinearSVC baseline with its own calibrated per-level probabilities (``shelfml evaluate``'s
    comparison): a softmax of the path classifier's decision values (temperature by validation log loss), per-level
    prefix probabilities, then the same calibration and thresholds as the tagger, fitted on validation."""
    from shelfml.confidence import LevelCalibration, confidence_metrics, prefix_correct

    features, _, clf, path_of = fit_path_classifier(train)
    class_paths = [path_of[c] for c in clf.classes_]
    levels = train.taxonomy().levels
    depth = len(levels)

    def scored(part):
        scores = clf.decision_function(features.transform(part.inputs()))
        return scores.reshape(len(part), -1) if scores.ndim == 2 else np.stack([-scores, scores], axis=1)

    val_scores, test_scores = scored(validation), scored(test)
    index = {c: j for j, c in enumerate(clf.classes_)}
    gold_val = np.array([index.get(format_path(lab.path), -1) for lab in validation.labels()])
    known = gold_val >= 0
    losses = {t: float(-np.log(np.maximum(_softmax(val_scores[known], t)[np.arange(known.sum()), gold_val[known]],
                                          1e-12)).mean()) for t in temperatures}
    temperature = min(losses, key=losses.get)

    def per_level(part, scores):
        probs = _softmax(scores, temperature)
        preds = [Label(class_paths[j], "") for j in probs.argmax(axis=1)]
        return _level_probabilities(probs, class_paths, depth), prefix_correct(part.labels(), preds, depth), preds

    raw_val, correct_val, _ = per_level(validation, val_scores)
    calibration, _ = LevelCalibration.fit(raw_val, correct_val, levels, target_precision)
    raw, correct, preds = per_level(test, test_scores)
    metrics = confidence_metrics(raw, correct, levels, [len(p.path) for p in preds], calibration)
    metrics.update(model="tfidf-word1-2+char2-5 LinearSVC, softmax of its decision values", temperature=temperature,
                   thresholds=calibration.thresholds)
    return metrics
