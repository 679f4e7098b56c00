"""The ``shelfml`` command line: train, evaluate, predict, baseline, pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shelfml.checkpoint import CheckpointError
from shelfml.data import DataError, DataSpec

USER_ERRORS = (DataError, CheckpointError, FileExistsError, FileNotFoundError)


def add_data_arguments(p: argparse.ArgumentParser, default: str | None = "synthetic") -> None:
    """The data source and the column mapping, shared by every command that reads a catalog."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default, help="'synthetic', 'flipkart', or a CSV file path"
                   + ("" if default else " (default: the data recorded in the checkpoint)"))
    g.add_argument("--text-col", help="CSV column holding the title")
    g.add_argument("--levels", type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                   help="CSV label columns, top level first: col1,col2[,col3[,col4]]")
    g.add_argument("--brand-col")
    g.add_argument("--price-col")
    g.add_argument("--image-col")
    g.add_argument("--desc-col")
    g.add_argument("--encoding", default="utf-8", help="CSV text encoding")
    g.add_argument("--min-depth", type=int, default=4, help="Flipkart: minimum category-tree depth")
    g.add_argument("--rows", type=int, default=4000, help="synthetic catalog size")
    g.add_argument("--limit", type=int, help="use only the first N usable rows")


def data_spec(a: argparse.Namespace) -> DataSpec | None:
    if a.data is None:
        return None
    return DataSpec(source=a.data, text_col=a.text_col, levels=a.levels, brand_col=a.brand_col,
                    price_col=a.price_col, image_col=a.image_col, desc_col=a.desc_col, encoding=a.encoding,
                    min_depth=a.min_depth, synthetic_rows=a.rows, limit=a.limit)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from shelfml.tagger import MODEL_SHAPES

    g = p.add_argument_group("tagger model and training")
    g.add_argument("--shape", default="tiny", choices=sorted(MODEL_SHAPES), help="T5 shape trained from scratch")
    g.add_argument("--model", help="local Hugging Face T5 directory to fine-tune (nothing is downloaded)")
    g.add_argument("--vocab-size", type=int, default=8000)
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--patience", type=int, default=3)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--brand-mode", default="known+copy", choices=["known", "known+copy"])
    g.add_argument("--device", default="auto")
    g.add_argument("--force", action="store_true", help="replace an existing output directory")


def tagger_args(a: argparse.Namespace):
    from shelfml.training.tagger import TaggerArgs
    from shelfml.training.trainer import TrainConfig

    train = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, max_steps=a.max_steps,
                        patience=a.patience, seed=a.seed, device=a.device)
    return TaggerArgs(shape=a.shape, model=a.model, vocab_size=a.vocab_size, brand_mode=a.brand_mode,
                      split_seed=a.split_seed, train=train)


def print_metrics(title: str, metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, dict) and key in ("level_accuracy", "latency"):
            for k, v in value.items():
                table.add_row(f"{key}.{k}", f"{v:.4f}" if isinstance(v, float) else str(v))
        elif isinstance(value, (int, float, str)) and key not in ("score",):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console(stderr=True).print(table)


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_train(a: argparse.Namespace) -> None:
    from shelfml.training.tagger import train_tagger

    manifest = train_tagger(data_spec(a), Path(a.out), tagger_args(a), force=a.force)
    print_metrics(f"best validation ({a.out})", manifest["metrics"]["validation"])


def cmd_evaluate(a: argparse.Namespace) -> None:
    from shelfml.evaluate import evaluate_tagger

    metrics = evaluate_tagger(Path(a.checkpoint), data_spec(a), a.split, a.out and Path(a.out), a.batch_size,
                              a.eval_limit, a.brand_mode)
    print_metrics(f"{a.checkpoint} on {a.split}", metrics)
    print(json.dumps(metrics, default=str))


def cmd_predict(a: argparse.Namespace) -> None:
    from shelfml.labels import format_target
    from shelfml.tagger import Tagger

    if a.texts:
        texts = a.texts
    else:
        stream = open(a.file, encoding="utf-8") if a.file and a.file != "-" else sys.stdin
        texts = [line.strip() for line in stream if line.strip()]
    if not texts:
        raise DataError("no input texts: pass them as arguments, with --file, or on stdin")
    tagger = Tagger.load(Path(a.checkpoint), brand_mode=a.brand_mode)
    for text, pred in zip(texts, tagger.predict(texts, batch_size=a.batch_size)):
        record = {"text": text, "label": format_target(pred.label),
                  **dict(zip(tagger.taxonomy.levels, pred.label.path)), "brand": pred.label.brand,
                  "confidence": float(f"{pred.confidence:.6g}")}
        print(json.dumps(record, ensure_ascii=False))


def cmd_baseline(a: argparse.Namespace) -> None:
    from shelfml.evaluate import write_json
    from shelfml.training.baseline import baseline_tagger

    metrics = baseline_tagger(data_spec(a), split_seed=a.split_seed)
    print_metrics("TF-IDF baseline on test", metrics)
    if a.out:
        write_json(Path(a.out), metrics)
    print(json.dumps(metrics, default=str))


def cmd_pipeline(a: argparse.Namespace) -> None:
    from shelfml.pipeline import run_pipeline

    report = run_pipeline(Path(a.out), data_spec(a), tagger_args(a), force=a.force)
    print_metrics("tagger (test)", report["tagger"]["metrics"])
    print_metrics("baseline (test)", report["tagger"]["baseline"])
    print(f"report: {Path(a.out) / 'report.json'}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shelfml", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="task", required=True)
    p = train.add_parser("tagger", help="train the T5 category/brand tagger")
    add_data_arguments(p)
    add_train_arguments(p)
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a checkpoint on a split")
    p.add_argument("checkpoint")
    add_data_arguments(p, default=None)
    p.add_argument("--split", default="test", choices=["train", "validation", "test", "all"])
    p.add_argument("--out", help="folder for metrics.json and predictions.csv (default: CKPT/eval-SPLIT)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-limit", type=int, help="score only the first N rows of the split")
    p.add_argument("--brand-mode", choices=["known", "known+copy"], help="override the checkpoint's")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="tag texts (arguments, --file, or stdin) as JSON lines")
    p.add_argument("checkpoint")
    p.add_argument("texts", nargs="*")
    p.add_argument("--file", help="one text per line ('-' for stdin)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--brand-mode", choices=["known", "known+copy"])
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("baseline", help="TF-IDF + linear classifier on the same grouped split")
    p.add_argument("--task", default="tagger", choices=["tagger"])
    add_data_arguments(p)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", help="write the metrics JSON here")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("pipeline", help="train, evaluate and compare every stage; writes DIR/report.json")
    add_data_arguments(p)
    add_train_arguments(p)
    p.add_argument("--out", default="runs/default")
    p.set_defaults(func=cmd_pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"shelfml: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
