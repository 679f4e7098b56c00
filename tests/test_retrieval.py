"""Retrieval: index round trip, leakage-free neighbours, recall of approximate indexes, enrichment format,
the tagger trained with retrieval, and every refusal (with the real all-MiniLM-L6-v2 on a small corpus)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shelfml.data import Catalog, load_catalog, normalise_title, split_catalog
from shelfml.labels import Label
from shelfml.retrieval import (
    FIELDS, INDEX_FILE, MANIFEST_FILE, METADATA_FILE, EnrichFormat, Enricher, IndexArgs, Neighbour, RetrievalError,
    Retriever, build_index, build_index_from_spec, enrich_training_rows, neighbour_log_price,
    training_neighbours,
)
from shelfml.training.trainer import TrainConfig

from conftest import needs_shared


@pytest.fixture(scope="module")
def parts(small_spec):
    return split_catalog(load_catalog(small_spec), seed=0)[0]


@pytest.fixture(scope="module")
def flat_index(tmp_path_factory, small_spec) -> Path:
    out = tmp_path_factory.mktemp("index") / "flat"
    build_index_from_spec(small_spec, out, IndexArgs(kind="flat"), split="train")
    return out


@pytest.fixture(scope="module")
def retriever(flat_index) -> Retriever:
    return Retriever.load(flat_index)


def with_duplicate_titles(catalog: Catalog, rows: int = 150) -> Catalog:
    """The first rows plus, for every 10th row, a copy whose title differs only in case and punctuation."""
    frame = catalog.frame.head(rows)
    twins = frame.iloc[::10].copy()
    twins["text"] = [f"{t.upper()}!!" for t in twins["text"]]
    twins["description"] = "another seller's copy"
    return Catalog(pd.concat([frame, twins], ignore_index=True), catalog.level_names, "synthetic+twins")


def test_index_round_trip(flat_index, retriever, parts):
    assert not (flat_index.parent / f"{flat_index.name}.shards").exists()  # removed once the index is written
    files = {p.name for p in flat_index.iterdir()}
    assert {INDEX_FILE, METADATA_FILE, MANIFEST_FILE} <= files
    manifest = json.loads((flat_index / MANIFEST_FILE).read_text())
    train = parts["train"]
    assert manifest["encoder"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["dimension"] == 384 and manifest["rows"] == len(train) == retriever.index.ntotal
    assert manifest["corpus"]["split"] == "train" and len(manifest["corpus"]["fingerprint"]) == 16
    assert manifest["recall_at_k"]["recall"] == 1.0 and manifest["kind"] == "flat"
    assert retriever.metadata["input"].tolist() == train.inputs()
    assert retriever.label(3) == train.labels()[3]
    # a corpus text finds itself first, with cosine ~1 (vectors are L2-normalised)
    found = retriever.search(train.inputs()[:5], k=3)
    assert [ns[0].score for ns in found] == pytest.approx([1.0] * 5, abs=1e-4)
    assert all(normalise_title(train.frame["text"][i]) == retriever.keys[ns[0].row] for i, ns in enumerate(found))
    # the stored vectors equal a fresh embedding of the same texts
    assert np.allclose(retriever.stored_vectors(train.inputs())[:5], retriever.embed(train.inputs()[:5]), atol=1e-5)


def test_neighbours_exclude_self_and_same_normalised_title(tmp_path, small_catalog):
    corpus = with_duplicate_titles(small_catalog)
    build_index(corpus, tmp_path / "twins", progress=False)
    r = Retriever.load(tmp_path / "twins")
    keys = corpus.frame["text"].map(normalise_title).tolist()
    twins = {k for k in keys if keys.count(k) > 1}
    assert len(twins) >= 15  # the test is not vacuous: many titles have a differently written twin
    vectors = r.stored_vectors(corpus.inputs())
    free, leaky = r.search_vectors(vectors, 5, keys), r.search_vectors(vectors, 5)
    assert all(keys[ns[0].row] == keys[q] for q, ns in enumerate(leaky))  # without exclusion: self or twin first
    for q, ns in enumerate(free):
        assert len(ns) == 5
        assert q not in [n.row for n in ns], f"row {q} retrieved itself"
        assert all(keys[n.row] != keys[q] for n in ns), f"row {q} retrieved a row with its normalised title"
    # the training enrichment goes through the same exclusion (stored vectors and re-embedding agree)
    fmt = EnrichFormat(5, ["labels", "brands"])
    enricher = Enricher(r, fmt)
    assert enrich_training_rows(enricher, corpus, progress=False) == enricher.render(corpus.inputs(), free)
    sample = corpus.subset(range(0, 150, 10))
    via_text = training_neighbours(r, sample, 5, progress=False)  # not the index's corpus: re-embedded
    assert all(keys[n.row] != normalise_title(t) for ns, t in zip(via_text, sample.frame["text"]) for n in ns)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "hnsw_sq"], ids=["ivf", "hnsw", "hnsw_sq"])
def test_approximate_index_records_recall(tmp_path, small_catalog, kind):
    manifest = build_index(small_catalog.subset(range(300)), tmp_path / kind, IndexArgs(kind=kind), progress=False)
    recall = manifest["recall_at_k"]
    assert recall["k"] == 10 and recall["queries"] == 300
    assert 0.8 <= recall["recall"] <= 1.0, recall
    assert json.loads((tmp_path / kind / MANIFEST_FILE).read_text())["recall_at_k"] == recall
    r = Retriever.load(tmp_path / kind)
    assert len(r.search(small_catalog.inputs()[:2], k=4)[0]) == 4


@pytest.mark.parametrize("fields", [["labels", "brands"], ["labels"], ["brands"], list(FIELDS),
                                    ["labels", "descriptions"]],
                         ids=["labels+brands", "labels", "brands", "all", "labels+descriptions"])
def test_enrichment_format_round_trip(fields):
    fmt = EnrichFormat(3, fields)
    assert EnrichFormat.from_dict(json.loads(json.dumps(fmt.to_dict()))) == fmt
    neighbours = [(Label(("home", "kitchen", "pans"), "Ovalia"), "Non-stick; 24 cm || oven safe :: yes"),
                  (Label(("home", "kitchen", "pots"), ""), ""),
                  (Label(("toys", "games", "cards"), "Kornwell Co"), "A deck")]
    enriched = fmt.format("Ovalia frying pan 24 cm. Non-stick", neighbours)
    text, _, body = enriched.partition(" || ")
    assert text == "Ovalia frying pan 24 cm. Non-stick"
    items = body.split(" ; ")
    assert len(items) == 3 and "||" not in body
    for (label, desc), item in zip(neighbours, items):
        assert ("home > kitchen" in item or "toys > games" in item) == ("labels" in fields)
        if "brands" in fields and label.brand:
            assert label.brand in item
        if "descriptions" in fields and desc:
            assert item.endswith(", ".join(
                p.strip() for p in desc.replace("||", ";").replace("::", ";").split(";") if p.strip())[:80])


def test_neighbour_price_is_the_weighted_median(retriever):
    m = retriever.metadata
    rows = [0, 0, 1]
    ns = [Neighbour(m["id"][r], s, r) for r, s in zip(rows, (0.9, 0.8, 0.95))]
    logs = np.log1p(m["price"].to_numpy(dtype=float)[rows])
    assert neighbour_log_price(retriever, ns) == pytest.approx(np.sort(logs)[np.searchsorted(
        np.cumsum(np.array([0.9, 0.8, 0.95])[np.argsort(logs)]), 0.5 * 2.65)])


def test_price_neighbour_feature_never_sees_the_rows_own_title(retriever, parts):
    from shelfml.retrieval import price_neighbour_features

    train = parts["train"].subset(range(40))
    vectors = retriever.stored_vectors(parts["train"].inputs())[:40]
    keys = train.frame["text"].map(normalise_title).tolist()
    leaky = price_neighbour_features(retriever, train.inputs(), 5, vectors=vectors)
    free = price_neighbour_features(retriever, train.inputs(), 5, keys, vectors=vectors)
    assert leaky.shape == free.shape == (40, 2) and np.isfinite(free).all()
    assert leaky[:, 1] == pytest.approx(np.ones(40), abs=1e-4)  # without exclusion the row finds itself
    assert (free[:, 1] < 0.9999).all()


@pytest.fixture(scope="module")
def retrieval_checkpoint(tmp_path_factory, small_spec, flat_index) -> Path:
    from shelfml.training.tagger import TaggerArgs, train_tagger

    out = tmp_path_factory.mktemp("rckpt") / "tagger"
    args = TaggerArgs(shape="tiny", vocab_size=800, val_decode_limit=32, retrieval=3, retrieval_index=str(flat_index),
                      train=TrainConfig(epochs=1, max_steps=8, batch_size=16, lr=3e-3, progress=False))
    train_tagger(small_spec, out, args)
    return out


def test_tagger_trained_with_retrieval_records_and_applies_it(retrieval_checkpoint, retriever, parts, tmp_path):
    from shelfml.checkpoint import read_manifest
    from shelfml.tagger import Tagger

    manifest = read_manifest(retrieval_checkpoint)
    recorded = manifest["retrieval"]
    assert recorded["index"]["fingerprint"] == retriever.fingerprint
    assert recorded["format"]["k"] == 3 and recorded["format"]["fields"] == ["labels", "brands"]
    assert recorded["exclude_same_title_at_training"] is True
    assert manifest["decode"]["max_input_tokens"] == 96 + EnrichFormat(3).token_budget()
    tagger = Tagger.load(retrieval_checkpoint)
    texts = parts["test"].inputs()[:6]
    enriched = tagger.enricher.enrich(texts)
    text, _, body = enriched[0].partition(" || ")
    assert text == texts[0][:240].strip() and len(body.split(" ; ")) == 3
    copy = tmp_path / "copy"
    shutil.copytree(retrieval_checkpoint, copy)
    first = tagger.predict(texts, batch_size=4)
    assert recorded["index"]["path"] == "retrieval_index" and (copy / "retrieval_index" / "index.json").is_file()
    second = Tagger.load(copy).predict(texts, batch_size=3)  # the index travels inside the checkpoint
    assert [p.label for p in first] == [p.label for p in second]
    assert all(p.label.path in tagger.taxonomy for p in first)


# ---------------------------------------------------------------------------------------------
# Refusals: each names both sides


def _tamper(directory: Path, **fields) -> None:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    for key, value in fields.items():
        target, _, leaf = key.rpartition(".")
        (manifest[target] if target else manifest)[leaf] = value
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


def _small_faiss(directory: Path, d: int = 8) -> None:
    import faiss

    index = faiss.IndexFlatIP(d)
    index.add(np.eye(d, dtype=np.float32)[np.arange(len(pd.read_csv(directory / METADATA_FILE))) % d])
    faiss.write_index(index, str(directory / INDEX_FILE))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: _tamper(d, **{"encoder.name": "intfloat/e5-small", "encoder.digest": "0123456789abcdef"}),
         r"built with encoder intfloat/e5-small \(weights 0123456789abcdef, dimension 384\), but the query encoder "
         r"is sentence-transformers/all-MiniLM-L6-v2 \(weights [0-9a-f]{16}, dimension 384\)"),
        (lambda d: (_tamper(d, **{"encoder.dimension": 8, "dimension": 8}), _small_faiss(d)),
         r"dimension 8\), but the query encoder is sentence-transformers/all-MiniLM-L6-v2 .*dimension 384"),
        (lambda d: _small_faiss(d),
         r"holds 8-dimensional vectors, but its manifest says 384 and the query encoder .* gives 384"),
        (lambda d: (d / MANIFEST_FILE).unlink(), "is not a shelfml index: index.json is missing"),
        (lambda d: (d / METADATA_FILE).write_text("id,title_key\na,b\n"),
         r"\d+ vectors, 1 metadata rows and \d+ rows in the manifest must be equal"),
    ],
    ids=["other-encoder", "other-dimension", "faiss-file-dimension", "no-manifest", "metadata-rows"],
)
def test_bad_index_is_refused(flat_index, tmp_path, breakage, message):
    broken = tmp_path / "broken"
    shutil.copytree(flat_index, broken)
    breakage(broken)
    with pytest.raises(RetrievalError, match=message):
        Retriever.load(broken)


@pytest.mark.parametrize(
    "corpus, ids, message",
    [
        (lambda c: c.subset([]), None, r"corpus synthetic is empty: an index needs at least one row"),
        (lambda c: c.subset(range(5)), ["a", "b", "a", "c", "d"],
         r"duplicate id 'a' in corpus synthetic: rows 0 and 2"),
        (lambda c: c.subset(range(5)), ["a", "b"], r"2 ids for a corpus of 5 rows"),
    ],
    ids=["empty-corpus", "duplicate-ids", "id-count"],
)
def test_bad_corpus_is_refused_before_embedding(small_catalog, tmp_path, corpus, ids, message):
    with pytest.raises(RetrievalError, match=message):
        build_index(corpus(small_catalog), tmp_path / "out", ids=ids, progress=False)
    assert not (tmp_path / "out").exists()


def test_index_build_refuses_existing_output_and_missing_gpu(small_catalog, flat_index, tmp_path):
    with pytest.raises(FileExistsError, match="already exists"):
        build_index(small_catalog.subset(range(3)), flat_index, progress=False)
    from shelfml.retrieval import has_faiss_gpu

    if not has_faiss_gpu():
        with pytest.raises(RetrievalError, match="no GPU support"):
            build_index(small_catalog.subset(range(3)), tmp_path / "g", IndexArgs(gpu=True), progress=False)


def test_checkpoint_with_retrieval_refuses_missing_or_other_index(retrieval_checkpoint, tmp_path, small_catalog):
    from shelfml.checkpoint import read_manifest
    from shelfml.tagger import Tagger

    recorded = read_manifest(retrieval_checkpoint)["retrieval"]["index"]
    moved = tmp_path / "moved"
    shutil.copytree(retrieval_checkpoint, moved)
    _tamper_ckpt = json.loads((moved / "shelfml.json").read_text())
    _tamper_ckpt["retrieval"]["index"]["path"] = str(tmp_path / "gone")
    (moved / "shelfml.json").write_text(json.dumps(_tamper_ckpt))
    with pytest.raises(RetrievalError, match=rf"checkpoint {moved} was trained with retrieval \(k=3, index "
                       rf"{recorded['fingerprint']} at {tmp_path / 'gone'}\), but no index was given"):
        Tagger.load(moved)
    with pytest.raises(RetrievalError, match=rf"trained with retrieval .*, but {tmp_path / 'nowhere'} is not an index"):
        Tagger.load(retrieval_checkpoint, retrieval_index=tmp_path / "nowhere")
    build_index(small_catalog.subset(range(40)), tmp_path / "other", progress=False)
    with pytest.raises(RetrievalError, match=rf"trained against index {recorded['fingerprint']} \(\d+ rows, flat\), "
                       rf"but {tmp_path / 'other'} is index [0-9a-f]{{16}} \(40 rows, flat\)"):
        Tagger.load(retrieval_checkpoint, retrieval_index=tmp_path / "other")


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(retrieval=3), r"--retrieval 3 needs --retrieval-index DIR"),
        (dict(retrieval=3, retrieval_fields=["colours"]), r"retrieval fields \['colours'\] must be a non-empty subset"),
        (dict(retrieval=3, leaky=True), r"holds \d+ normalised titles of this catalog's validation/test split"),
    ],
    ids=["no-index", "bad-fields", "index-with-test-titles"],
)
def test_training_with_bad_retrieval_settings_is_refused(small_spec, flat_index, tmp_path, kw, message):
    from shelfml.training.tagger import TaggerArgs, train_tagger

    if kw.pop("leaky", False):
        kw["retrieval_index"] = str(tmp_path / "all")
        build_index(load_catalog(small_spec), tmp_path / "all", progress=False)  # every split: leaks
    elif "retrieval_fields" in kw:
        kw["retrieval_index"] = str(flat_index)
    args = TaggerArgs(shape="tiny", vocab_size=800, train=TrainConfig(max_steps=1, progress=False), **kw)
    with pytest.raises(RetrievalError, match=message):
        train_tagger(small_spec, tmp_path / "ckpt", args)


def test_retrieval_benchmark_small():
    from shelfml.benchmarks.retrieval import retrieval_benchmark

    result = retrieval_benchmark(rows=3000, dimension=32, queries=30, batch=64)
    assert set(result["kinds"]) == {"flat", "hnsw"}
    flat, hnsw = result["kinds"]["flat"], result["kinds"]["hnsw"]
    assert flat["recall_at_k"] == 1.0 and 0.5 < hnsw["recall_at_k"] <= 1.0
    assert flat["latency_ms"]["p50"] > 0 and hnsw["batch_queries_per_s"] > 0 and flat["index_bytes"] > 3000 * 32 * 4


def test_compressed_kinds_hold_fewer_bytes_and_record_recall():
    """IVF-PQ and HNSW over 8-bit codes against exact search (W6's rows), on clustered synthetic vectors."""
    from shelfml.benchmarks.retrieval import retrieval_benchmark

    result = retrieval_benchmark(rows=12_000, dimension=32, queries=50, batch=64, kinds=("flat", "ivfpq", "hnsw_sq"))
    flat, pq, sq = (result["kinds"][k] for k in ("flat", "ivfpq", "hnsw_sq"))
    assert pq["index_bytes"] < flat["index_bytes"] / 3  # 4 bytes of code + an id per vector, against 128
    assert 0.3 < pq["recall_at_k"] <= 1.0 and 0.7 < sq["recall_at_k"] <= 1.0


def test_compressed_kinds_refuse_what_they_cannot_build(small_catalog, tmp_path):
    with pytest.raises(RetrievalError, match=r"ivfpq with 8-bit codes needs at least 9,984 vectors.*got 300"):
        build_index(small_catalog.subset(range(300)), tmp_path / "pq", IndexArgs(kind="ivfpq"), progress=False)
    with pytest.raises(RetrievalError, match="--pq-m 5 does not divide the vectors' dimension 384"):
        build_index(small_catalog.subset(range(300)), tmp_path / "pq", IndexArgs(kind="ivfpq", pq_m=5), progress=False)
    assert not (tmp_path / "pq").exists()  # nothing written


def test_a_compressed_index_is_refused_for_another_encoder(small_catalog, tmp_path):
    build_index(small_catalog.subset(range(300)), tmp_path / "sq", IndexArgs(kind="hnsw_sq"), progress=False)
    assert Retriever.load(tmp_path / "sq").describe()["kind"] == "hnsw_sq"
    _tamper(tmp_path / "sq", **{"encoder.name": "intfloat/e5-small", "encoder.digest": "0123456789abcdef"})
    with pytest.raises(RetrievalError, match=r"built with encoder intfloat/e5-small"):
        Retriever.load(tmp_path / "sq")


def test_embedding_in_shards_resumes_after_an_interruption(tmp_path):
    """A large corpus is embedded shard by shard: an interrupted build keeps its finished shards and embeds only
    the rest when run again; shards of another corpus or encoder are not reused."""
    from shelfml.retrieval.index import embed_in_shards

    class Encoder:
        dimension, calls, fail_at = 4, [], None

        def encode(self, texts, batch_size, progress):
            if len(self.calls) == self.fail_at:
                raise KeyboardInterrupt
            self.calls.append(texts[0])
            return np.array([[len(t), 1, 2, 3] for t in texts], np.float32)

    texts = [f"t{i}" * (i % 5 + 1) for i in range(25)]
    encoder, folder = Encoder(), tmp_path / "shards"
    encoder.fail_at = 2
    with pytest.raises(KeyboardInterrupt):
        embed_in_shards(encoder, texts, folder, "corpus-a", shard_rows=10, progress=False)
    assert len(list(folder.glob("*.npy"))) == 2
    encoder.fail_at, encoder.calls = None, []
    vectors = embed_in_shards(encoder, texts, folder, "corpus-a", shard_rows=10, progress=False)
    assert encoder.calls == [texts[20]]  # only the shard that was not finished
    assert vectors.shape == (25, 4) and vectors[:, 0].tolist() == [len(t) for t in texts]
    embed_in_shards(encoder, texts[:5], folder, "corpus-b", shard_rows=10, progress=False)
    assert all(p.name.startswith("corpus-b") for p in folder.glob("*.npy"))


def test_recall_counts_ties_not_ids():
    """Catalogs repeat texts: among equal vectors any id is right, so recall compares scores."""
    import faiss

    from shelfml.retrieval import recall_at_k

    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 16)).astype(np.float32)
    vectors = np.repeat(base / np.linalg.norm(base, axis=1, keepdims=True), 4, axis=0)  # every vector 4 times
    exact = faiss.IndexFlatIP(16)
    exact.add(vectors)

    class OtherTwins:  # answers with another copy of each vector found: other ids, the same vectors
        def search(self, queries, k):
            scores, ids = exact.search(queries, k)
            return scores, 4 * (ids // 4) + (3 - ids % 4)

    assert recall_at_k(OtherTwins(), vectors, k=4)["recall"] == 1.0


# ---------------------------------------------------------------------------------------------
# Price: the neighbour feature (median neighbour log price + top similarity) as inputs of the head


@pytest.fixture(scope="module")
def neighbour_price_checkpoint(tmp_path_factory, small_spec, flat_index, tiny_encoder) -> Path:
    from conftest import fast_args

    from shelfml.training.price import train_price

    out = tmp_path_factory.mktemp("nprice") / "price"
    train_price(small_spec, out, fast_args(tiny_encoder, neighbours=3, retrieval_index=str(flat_index)))
    return out


def test_price_trained_with_the_neighbour_feature_records_and_uses_it(neighbour_price_checkpoint, retriever, parts):
    from shelfml.checkpoint import read_manifest
    from shelfml.price import PriceRegressor
    from shelfml.retrieval import neighbour_price_features

    manifest = read_manifest(neighbour_price_checkpoint)
    recorded = manifest["retrieval"]
    assert manifest["model"]["neighbours"] == 3 and recorded["format"]["k"] == 3
    assert recorded["index"]["fingerprint"] == retriever.fingerprint and recorded["exclude_same_title_at_training"]
    # training rows get leakage-free features: never their own row (similarity 1) nor their own title
    train = parts["train"].subset(range(60))
    found = training_neighbours(retriever, train, 3, progress=False)
    keys = train.frame["text"].map(normalise_title).tolist()
    assert all(retriever.keys[n.row] != keys[q] for q, ns in enumerate(found) for n in ns)
    assert (neighbour_price_features(retriever, found)[:, 1] < 0.9999).all()
    # the head reads the feature: other neighbour prices give other predictions
    regressor = PriceRegressor.load(neighbour_price_checkpoint)
    texts = parts["test"].inputs()[:8]
    features = regressor.neighbour_features(texts)
    assert features.shape == (8, 2) and np.isfinite(features).all()
    plain = regressor.predict(texts)
    assert np.allclose(plain, regressor.predict(texts, neighbour_features=features))
    shifted = features.copy()
    shifted[:, 0] += 2.0
    assert not np.allclose(plain, regressor.predict(texts, neighbour_features=shifted))
    unknown = features.copy()
    unknown[:, 0] = np.nan  # no neighbour with a price: still a finite price
    assert np.isfinite(regressor.predict(texts, neighbour_features=unknown)).all()


def test_price_with_the_neighbour_feature_refuses_a_missing_or_other_index(neighbour_price_checkpoint, tmp_path,
                                                                          small_catalog):
    from shelfml.price import PriceRegressor

    with pytest.raises(RetrievalError, match=r"trained with retrieval \(k=3.*is not an index"):
        PriceRegressor.load(neighbour_price_checkpoint, retrieval_index=tmp_path)
    build_index(small_catalog.subset(range(50)), tmp_path / "other", progress=False)
    with pytest.raises(RetrievalError, match=r"was trained against index \w+ .* but .*other is index"):
        PriceRegressor.load(neighbour_price_checkpoint, retrieval_index=tmp_path / "other")


@pytest.fixture(scope="module")
def neighbour_price_export(tmp_path_factory, neighbour_price_checkpoint) -> Path:
    from shelfml.export.exporter import ExportArgs, export_checkpoint

    out = tmp_path_factory.mktemp("nprice-export") / "export"
    export_checkpoint(neighbour_price_checkpoint, out, ExportArgs(parity_rows=16))
    return out


def test_bench_times_the_neighbour_price_model(neighbour_price_checkpoint, neighbour_price_export):
    """W3 feeds fixed neighbour features to eager and ONNX Runtime alike (retrieval itself is timed in W6)."""
    from shelfml.benchmarks.backends import price_backends
    from shelfml.price.runners import OrtPrice
    from shelfml.price import PriceRegressor

    regressor = PriceRegressor.load(neighbour_price_checkpoint)
    backends = {b.name: b for b in price_backends(regressor, {"fp32": OrtPrice.load(neighbour_price_export)})}
    ids, mask = regressor.tokenizer.batch(["steel water bottle 1 l", "cotton shirt for men, blue"], 128)
    eager, onnx = backends["eager"].run(ids, mask), backends["onnx-fp32"].run(ids, mask)
    assert eager.shape == (2,) and np.all(eager > 0)
    assert onnx == pytest.approx(eager, rel=1e-4)


def test_price_neighbour_feature_needs_an_index(small_spec, tiny_encoder, tmp_path):
    from conftest import fast_args

    from shelfml.training.price import train_price

    with pytest.raises(RetrievalError, match="--neighbours 3 needs --retrieval-index"):
        train_price(small_spec, tmp_path / "ckpt", fast_args(tiny_encoder, neighbours=3))
    assert not (tmp_path / "ckpt").exists()


# ---------------------------------------------------------------------------------------------
# Served: the index ships in the model's version folder; a client sends only text


def test_served_models_retrieve_inside_the_server(retrieval_checkpoint, neighbour_price_checkpoint,
                                                  neighbour_price_export, parts, tmp_path):
    """The retrieval tagger and the neighbour-feature price model in one repository sharing one embedder leaf:
    served tags equal the in-process ones, served prices equal eager PyTorch's."""
    import tritonclient.grpc as grpcclient

    from shelfml.export.exporter import ExportArgs, ExportError, export_checkpoint
    from shelfml.model_repository.build import build_repository
    from shelfml.model_repository.server import TritonServer
    from shelfml.price import PriceRegressor
    from shelfml.tagger import Tagger

    manifest = export_checkpoint(retrieval_checkpoint, tmp_path / "export", ExportArgs(parity_rows=8, int8=False))
    embedder = manifest["parity"]["embedder"]  # the exported MiniLM against sentence-transformers
    assert embedder["max_abs_diff"] < 1e-4 and embedder["neighbours_identical"] == 1.0, embedder
    assert "embedder.onnx" in manifest["files"] and manifest["tensorrt_check"]["embedder"]["ok"]
    price = json.loads((neighbour_price_export / "export.json").read_text())
    assert price["parity"]["onnx-fp32"]["max_rel_price_diff"] < 1e-3, price["parity"]
    assert price["parity"]["embedder"]["neighbours_identical"] == 1.0
    assert [t["name"] for t in price["graphs"]["model"]["inputs"]][-2:] == ["neighbour_features", "wide_features"]
    assert price["tensorrt_check"]["model"]["ok"] and price["shape_ranges"]["embedder_sequence"][2] == 64
    build_repository(tmp_path / "repo", tagger=tmp_path / "export", price=neighbour_price_export)
    for model in ("tagger", "price"):
        assert (tmp_path / "repo" / model / "1" / "assets" / "retrieval_index" / "index.json").is_file()
    assert (tmp_path / "repo" / "embedder" / "configs" / "cpu.pbtxt").is_file()
    texts = parts["test"].inputs()[:6]
    expected = [" > ".join(p.label.path) for p in Tagger.load(retrieval_checkpoint).predict(texts)]
    expected_prices = PriceRegressor.load(neighbour_price_checkpoint).predict(texts)
    with TritonServer(tmp_path / "repo", log_file=tmp_path / "triton.log") as server, \
            grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
        served = [p[0].decode() for p in client.infer("tagger", [tensor]).as_numpy("path")]
        served_prices = client.infer("price", [tensor]).as_numpy("price")[:, 0]
    assert served == expected
    assert served_prices == pytest.approx(expected_prices, rel=1e-3)
    # the GPU configs' path: both python models reach the embedder (and their graphs) through BLS
    from shelfml.model_repository.build import read_config, write_config

    for model, key in (("tagger", "runner"), ("price", "runner")):
        cpu = tmp_path / "repo" / model / "configs" / "cpu.pbtxt"
        config = read_config(cpu)
        config.parameters[key].string_value = "bls"
        del config.model_warmup[:]  # BLS cannot run before the server is ready
        write_config(cpu, config)
    with TritonServer(tmp_path / "repo", log_file=tmp_path / "triton-bls.log") as server, \
            grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert [p[0].decode() for p in client.infer("tagger", [tensor]).as_numpy("path")] == expected
        assert client.infer("price", [tensor]).as_numpy("price")[:, 0] == pytest.approx(expected_prices, rel=1e-3)
    index = tmp_path / "export" / "assets" / "retrieval_index"
    moved = index.with_name("moved-away")
    Path(index).rename(moved)
    try:
        with pytest.raises(ExportError, match="not there to ship"):
            build_repository(tmp_path / "repo2", tagger=tmp_path / "export")
    finally:
        moved.rename(index)


def test_cli_price_with_the_neighbour_feature(tiny_encoder, flat_index, tmp_path):
    """index build --task price -> train price --neighbours -> evaluate / predict, and the refusal of another index."""
    from test_cli import shelfml

    data = ["--data", "synthetic", "--rows", "300"]
    shelfml("index", "build", *data, "--task", "price", "--out", tmp_path / "index")
    shelfml("train", "price", *data, "--encoder", tiny_encoder, "--max-length", 32, "--max-steps", 3,
            "--neighbours", 2, "--retrieval-index", tmp_path / "index", "--out", tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / "shelfml.json").read_text())
    assert manifest["retrieval"]["index"]["path"] == "retrieval_index"  # stored inside the checkpoint
    assert (tmp_path / "ckpt" / "retrieval_index" / "index.json").is_file()
    metrics = json.loads(shelfml("evaluate", tmp_path / "ckpt").stdout.splitlines()[-1])
    assert 0 <= metrics["smape"] <= 200
    record = json.loads(shelfml("predict", tmp_path / "ckpt", "steel water bottle 1 l").stdout)
    assert record["price"] > 0
    proc = shelfml("predict", tmp_path / "ckpt", "steel water bottle 1 l", "--retrieval-index", flat_index,
                   check=False)
    assert proc.returncode == 2 and "was trained against index" in proc.stderr, proc.stderr[-2000:]


def test_tied_neighbours_do_not_depend_on_float_noise(tmp_path, small_catalog):
    """Repeated titles tie; their order (and so the k-th neighbour, and a price median over them) must not flip
    when another encoder build (ONNX in the server) embeds the query a few ulps differently."""
    frame = small_catalog.frame.head(40).copy()
    frame.loc[10:19, "text"] = "Steel water bottle 1 l"  # ten identical rows, ten prices
    frame.loc[10:19, "description"] = ""
    corpus = Catalog(frame.reset_index(drop=True), small_catalog.level_names, "synthetic+ties")
    build_index(corpus, tmp_path / "ties", progress=False)
    r = Retriever.load(tmp_path / "ties")
    rng = np.random.default_rng(0)
    stored = r.index.reconstruct_n(0, r.index.ntotal)  # as when the corpus was embedded in differently padded batches
    r.index.reset()
    r.index.add(stored + rng.normal(0, 1e-7, stored.shape).astype(np.float32))
    query = r.embed(["Steel water bottle 1 l"])
    found = [[n.row for n in r.search_vectors(query + rng.normal(0, 1e-7, query.shape).astype(np.float32), 4)[0]]
             for _ in range(20)]
    assert all(rows == found[0] for rows in found), found
    tied = [row for row in found[0] if r.metadata["input"][row] == corpus.inputs()[10]]
    assert tied == sorted(tied) and len(tied) == 4


@needs_shared
def test_flipkart_price_neighbours_are_leakage_free_and_informative(tmp_path):
    """Real catalog: training rows never see a row with their normalised title, and the held-out rows'
    neighbour price (from training rows only) tracks their real price."""
    from shelfml.data import DataSpec
    from shelfml.retrieval import price_neighbour_features, training_retriever

    parts = split_catalog(load_catalog(DataSpec(source="flipkart", limit=2500), task="price"), seed=0)[0]
    build_index(parts["train"], tmp_path / "index", progress=False)
    retriever = training_retriever(tmp_path / "index", "--neighbours 5", parts)
    train = parts["train"].subset(range(300))
    keys = train.frame["text"].map(normalise_title).tolist()
    found = training_neighbours(retriever, train, 5, progress=False)
    leaky = retriever.search_vectors(retriever.stored_vectors(parts["train"].inputs())[:300], 5)
    assert sum(retriever.keys[ns[0].row] == keys[q] for q, ns in enumerate(leaky)) > 250  # not vacuous: self first
    assert all(len(ns) == 5 and all(retriever.keys[n.row] != keys[q] for n in ns) for q, ns in enumerate(found))
    held_out = parts["test"]
    features = price_neighbour_features(retriever, held_out.inputs(), 5)
    truth = np.log1p(held_out.frame["price"].to_numpy(dtype=float))
    ok = np.isfinite(features[:, 0])
    assert ok.mean() > 0.95 and np.corrcoef(features[ok, 0], truth[ok])[0, 1] > 0.4


def test_repository_refuses_two_embedders_of_different_weights(neighbour_price_export, tmp_path):
    """The tagger and the price model share one `embedder` leaf only when both were trained against the same
    encoder weights."""
    from shelfml.contract import ShapeRanges
    from shelfml.export.exporter import ExportError
    from shelfml.model_repository.build import _embedder_leaf, build_repository

    build_repository(tmp_path / "repo", price=neighbour_price_export)
    manifest = json.loads((neighbour_price_export / "export.json").read_text())
    ranges = ShapeRanges.from_dict(manifest["shape_ranges"])
    leaves: dict = {}
    assert _embedder_leaf(tmp_path / "repo", neighbour_price_export, manifest, ranges, "onnxruntime", leaves, True) == {
        "embedder_model": "embedder"}  # same weights: the existing leaf is reused
    manifest["graphs"]["embedder"]["encoder"] = {**manifest["graphs"]["embedder"]["encoder"], "digest": "0" * 16}
    with pytest.raises(ExportError, match="retrieval embedder .* differs from the one already in the repository"):
        _embedder_leaf(tmp_path / "repo", neighbour_price_export, manifest, ranges, "onnxruntime", leaves, True)
