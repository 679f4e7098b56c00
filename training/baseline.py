"""The honest comparison: TF-IDF (word + char n-grams) with linear classifiers, on the same split."""

from __future__ import annotations

import time

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion
from sklearn.svm import LinearSVC

from shelfml.data import DataSpec, load_catalog, split_catalog
from shelfml.labels import Label
from shelfml.metrics import tagger_metrics


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
    path_clf = LinearSVC(C=0.5).fit(x_train, [" > ".join(lab.path) for lab in train_labels])
    paths = {" > ".join(lab.path): lab.path for lab in train_labels}
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
