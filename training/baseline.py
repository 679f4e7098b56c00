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


def baseline_tagger(spec: DataSpec, split_seed: int = 0) -> dict:
    """One classifier over whole paths (so predictions are always valid paths) and one over brands."""
    catalog = load_catalog(spec, task="tagger")
    parts, split = split_catalog(catalog, seed=split_seed)
    train, test = parts["train"], parts["test"]
    start = time.perf_counter()
    features = tfidf_features()
    x_train = features.fit_transform(train.inputs())
    train_labels = train.labels()
    path_clf = LinearSVC(C=0.5).fit(x_train, [format_path(lab.path) for lab in train_labels])
    paths = {format_path(lab.path): lab.path for lab in train_labels}
    brands = [lab.brand for lab in train_labels]
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
