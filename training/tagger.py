"""Train the T5 tagger: data -> split -> tokenizer -> model -> the shared trainer -> checkpoint."""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, T5ForConditionalGeneration, T5TokenizerFast

from shelfml.checkpoint import read_manifest, update_manifest, write_checkpoint
from shelfml.confidence import TARGET_PRECISION, LevelCalibration, prefix_correct
from shelfml.data import Catalog, DataSpec, load_catalog, split_catalog
from shelfml.drift import top_level_reference
from shelfml.constraint import BRAND_MODES
from shelfml.labels import BRAND_SEP, LEVEL_SEP, format_target
from shelfml.metrics import tagger_metrics
from shelfml.parity import write_parity_sample
from shelfml.tagger.hf import hub_files
from shelfml.prior import PRIOR_DIR, LabelPrior, PriorConfig
from shelfml.retrieval.policy import store_index
from shelfml.tagger import MAX_INPUT_TOKENS, Tagger
from shelfml.tagger.model import build_t5
from shelfml.tokenizer import train_tokenizer
from shelfml.training.distributed import is_main
from shelfml.training.state import run_key, start_training, state_dir
from shelfml.training.trainer import TrainConfig, fit


# A sharper path prior saturates the per-level probabilities the calibration ranks by: on Flipkart weight 8
# (0.3 validation points over 4) left no threshold reaching 95% precision at the deepest level (all abstained).
MAX_PATH_WEIGHT = 4.0


@dataclass
class TaggerArgs:
    shape: str = "tiny"  # named T5 shape when no --model is given
    model: str | None = None  # local Hugging Face T5 directory to fine-tune instead
    vocab_size: int = 8000  # tokenizer trained on the corpus (ignored with --model)
    max_input_tokens: int = MAX_INPUT_TOKENS
    brand_mode: str = "known+copy"
    val_decode_limit: int = 1000  # validation rows decoded each epoch for item accuracy
    split_seed: int = 0
    retrieval: int = 0  # neighbours appended to each input (0: off); needs retrieval_index
    retrieval_index: str | None = None  # `shelfml index build` directory (built from the training split)
    retrieval_fields: list[str] = field(default_factory=lambda: ["labels", "brands"])  # or "descriptions"
    prior: bool = True  # the lexical label prior in the decode loop (its weight fitted on validation)
    prior_k: int = 20  # lexical neighbours the prior is built from
    prior_weights: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)  # the validation search's grid
    target_precision: float = TARGET_PRECISION  # per-level thresholds chosen on validation for this precision
    calibration_rows: int = 5000  # validation rows decoded to fit the calibration
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        assert self.brand_mode in BRAND_MODES, f"brand_mode must be one of {BRAND_MODES}"
        if not 0.0 < self.target_precision < 1.0:
            raise ValueError(f"--target-precision must be between 0 and 1, got {self.target_precision}")


def _collate(tagger: Tagger):
    """Training batches: the inputs tokenised exactly as at prediction time (:meth:`Tagger.encode`) + targets."""
    def collate(rows: list[tuple[str, object]]) -> dict[str, torch.Tensor]:
        texts, labels = zip(*rows)
        input_ids, attention_mask = tagger.encode(list(texts))
        targets = [tagger.codec.encode(lab) for lab in labels]
        width = max(len(t) for t in targets)
        label_ids = torch.full((len(targets), width), -100, dtype=torch.long)
        for i, t in enumerate(targets):
            label_ids[i, : len(t)] = torch.tensor(t)
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask),
                "labels": label_ids}

    return collate


def tokenizer_corpus(catalog: Catalog) -> list[str]:
    """Inputs plus every label string, so label values and separators tokenise into few pieces."""
    return catalog.inputs() + [format_target(lab) for lab in catalog.labels()]


def _model(args: TaggerArgs, parts: dict, out: Path):
    """(tokenizer, T5): a local Hugging Face T5 to fine-tune, or a tokenizer + T5 of a named shape from scratch
    (a resumed run takes the tokenizer its first run trained: the unigram trainer is not deterministic)."""
    if args.model:
        return AutoTokenizer.from_pretrained(args.model), T5ForConditionalGeneration.from_pretrained(args.model)
    if args.train.resume:
        tokenizer = T5TokenizerFast.from_pretrained(out)
    else:
        tokenizer = train_tokenizer(tokenizer_corpus(parts["train"]), args.vocab_size)
    return tokenizer, build_t5(args.shape, tokenizer)


def _refuse_collisions(tagger: Tagger) -> None:
    collisions = tagger.constraint.collisions
    if collisions:
        raise ValueError(f"{len(collisions)} taxonomy paths tokenise identically, e.g. {collisions[:3]}; the "
                         "tokenizer cannot tell them apart")


def _prior(args: TaggerArgs, train: Catalog, taxonomy) -> LabelPrior:
    """The label prior of the training rows (its weights are fitted after training, :func:`fit_prior`)."""
    return LabelPrior.build(train.inputs(), train.labels(), train.frame["text"].tolist(), taxonomy,
                            PriorConfig(k=args.prior_k))


def _manifest(spec: DataSpec, catalog: Catalog, split, args: TaggerArgs, tagger: Tagger, train: Catalog) -> dict:
    taxonomy, enricher = tagger.taxonomy, tagger.enricher
    return {
        "task": "tagger",
        "label_format": {"levels": taxonomy.levels, "level_sep": LEVEL_SEP, "brand_sep": BRAND_SEP},
        "taxonomy": taxonomy.to_dict(),
        "data": {"spec": asdict(spec), "source": catalog.source, "rows": len(catalog),
                 "fingerprint": catalog.fingerprint(), "skipped": catalog.skipped},
        "split": split.to_dict(),
        "model": {"shape": None if args.model else args.shape, "init": args.model or "random",
                  "parameters": sum(p.numel() for p in tagger.model.parameters())},
        "decode": {"brand_mode": args.brand_mode, "max_input_tokens": tagger.max_input_tokens,
                   "max_new_tokens": tagger.max_new_tokens},
        "retrieval": {**enricher.describe(), "exclude_same_title_at_training": True} if enricher else None,
        "training": {**asdict(args), "train": args.train.to_dict()},
        "drift": {"top_level": top_level_reference([label.path for label in train.labels()],  # the served mix's
                                                   [path[0] for path in taxonomy.paths])},  # reference
    }


def train_tagger(spec: DataSpec, out: Path, args: TaggerArgs, force: bool = False) -> dict:
    """Train, keep the best validation checkpoint in ``out``, and return its manifest."""
    key = run_key({**asdict(args), "train": args.train.to_dict()})
    start_training(out, force, args.train.resume, key)
    torch.manual_seed(args.train.seed)
    catalog = load_catalog(spec, task="tagger").report_skipped()
    parts, split = split_catalog(catalog, seed=args.split_seed)
    taxonomy = catalog.taxonomy()
    tokenizer, model = _model(args, parts, out)
    enricher = None
    if args.retrieval:
        from shelfml.retrieval import enrich_training_rows, training_enricher

        enricher = training_enricher(args.retrieval_index, args.retrieval, args.retrieval_fields, parts)
    max_input_tokens = args.max_input_tokens + (enricher.format.token_budget() if enricher else 0)
    prior = _prior(args, parts["train"], taxonomy) if args.prior else None
    tagger = Tagger(model, tokenizer, taxonomy, args.brand_mode, max_input_tokens, enricher=enricher, prior=prior)
    _refuse_collisions(tagger)

    collate = _collate(tagger)
    train_inputs = enrich_training_rows(enricher, parts["train"]) if enricher else parts["train"].inputs()
    loader = DataLoader(list(zip(train_inputs, parts["train"].labels())), batch_size=args.train.batch_size,
                        shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(args.train.seed))
    val = parts["validation"].subset(np.arange(min(len(parts["validation"]), args.val_decode_limit)))
    val_inputs, val_labels = val.inputs(), val.labels()
    val_model_inputs = enricher.enrich(val_inputs) if enricher else val_inputs
    val_batches = [collate(list(zip(val_model_inputs[i : i + 64], val_labels[i : i + 64])))
                   for i in range(0, len(val), 64)]

    def validate(m: torch.nn.Module) -> dict:
        device = next(m.parameters()).device
        losses = [m(**{k: v.to(device) for k, v in b.items()}).loss.item() for b in val_batches]
        preds = tagger.predict(val_inputs, batch_size=64)
        metrics = tagger_metrics(val_labels, [p.label for p in preds], taxonomy)
        metrics["val_loss"] = float(np.mean(losses))
        metrics["score"] = metrics["item_accuracy"] - 1e-3 * metrics["val_loss"]  # loss breaks ties
        return metrics

    manifest = _manifest(spec, catalog, split, args, tagger, parts["train"])

    def on_best(metrics: dict) -> None:
        manifest["metrics"] = {"validation": {k: v for k, v in metrics.items() if k != "score"}}

        def save(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            hub_files(model, tokenizer, tmp, manifest, tagger.max_input_tokens, tagger.max_new_tokens)
            write_parity_sample(tmp, parts["test"], "tagger")
            if enricher is not None:  # the index travels inside the checkpoint
                manifest["retrieval"]["index"] = store_index(enricher.retriever, tmp)
            if prior is not None:
                manifest["prior"] = prior.save(tmp)

        write_checkpoint(out, save, manifest)

    manifest["history"] = fit(model, loader, validate, on_best, args.train, state_dir(out), key)
    if not is_main():  # torchrun: rank 0 finishes the checkpoint
        return None
    update_manifest(out, history=manifest["history"])
    return fit_decoding(out, read_manifest(out), args, parts["validation"], val if prior is not None else None)


def fit_decoding(out: Path, manifest: dict, args: TaggerArgs, validation: Catalog, prior_rows: Catalog | None) -> dict:
    """With the best checkpoint: the label prior's weights on ``prior_rows`` (None: no prior), then the per-level
    calibration and thresholds on the validation split; both recorded in the manifest, which is returned (the
    resumable state is removed: nothing is left to resume)."""
    if prior_rows is not None:
        manifest["prior"] = fit_prior(out, prior_rows.inputs(), prior_rows.labels(), args.prior_weights)
        update_manifest(out, prior=manifest["prior"])
    rows = validation.subset(np.arange(min(len(validation), args.calibration_rows)))
    manifest["calibration"] = fit_calibration(out, rows.inputs(), rows.labels(), args.target_precision)
    update_manifest(out, calibration=manifest["calibration"])
    shutil.rmtree(state_dir(out), ignore_errors=True)
    return read_manifest(out)


def fit_calibration(ckpt: Path, texts: list[str], labels: list, target_precision: float = TARGET_PRECISION) -> dict:
    """Calibrate the per-level probabilities of the checkpoint's decoding (prior included) on validation rows and
    choose the thresholds for ``target_precision``; returns the manifest entry (with its validation summary)."""
    tagger = Tagger.load(ckpt)
    preds = tagger.predict(texts, batch_size=64)
    levels = tagger.taxonomy.levels
    raw = np.array([p.level_probs for p in preds], dtype=float)
    correct = prefix_correct(labels, [p.label for p in preds], len(levels))
    calibration, summary = LevelCalibration.fit(raw, correct, levels, target_precision)
    shown = ", ".join(f"{name} >= {t:.3f} ({summary['levels'][name]['method']}, ECE "
                      f"{summary['levels'][name]['ece_before']:.3f} -> {summary['levels'][name]['ece_after']:.3f})"
                      for name, t in zip(levels, calibration.thresholds))
    print(f"shelfml: calibration on {len(texts)} validation rows, thresholds for precision {target_precision}: {shown}",
          file=sys.stderr)
    return {**calibration.to_dict(), "validation": summary}


def fit_prior(ckpt: Path, texts: list[str], labels: list, weights: tuple[float, ...],
              temperatures: tuple[float, ...] = (0.05, 0.1, 0.2)) -> dict:
    """Fit the label prior's decoding on the validation rows with the best checkpoint: the path classifier's
    temperature and the path weight (at most ``MAX_PATH_WEIGHT``) by path accuracy (brand weight equal), then the
    brand classifier's temperature and the brand weight by item accuracy (ties: the smaller weight, the lower
    temperature). Returns the prior's manifest entry with the search."""
    tagger = Tagger.load(ckpt)
    cfg = tagger.prior.cfg

    def score(metric: str) -> float:
        preds = tagger.predict(texts, batch_size=64)
        return round(tagger_metrics(labels, [p.label for p in preds], tagger.taxonomy)[metric], 6)

    paths, items = {}, {}
    for temperature in temperatures:
        for weight in (w for w in weights if w <= MAX_PATH_WEIGHT):
            cfg.path_temperature, cfg.weight, cfg.brand_weight = temperature, weight, weight
            paths[(temperature, weight)] = score("path_accuracy")
    (cfg.path_temperature, cfg.weight), _ = max(paths.items(), key=lambda kv: (kv[1], -kv[0][1], -kv[0][0]))
    for temperature in temperatures:
        for weight in weights:
            cfg.temperature, cfg.brand_weight = temperature, weight
            items[(temperature, weight)] = score("item_accuracy")
    (cfg.temperature, cfg.brand_weight), best = max(items.items(), key=lambda kv: (kv[1], -kv[0][1], -kv[0][0]))
    search = {"path_accuracy": {f"T={t} w={w}": v for (t, w), v in paths.items()},
              "item_accuracy": {f"T={t} w={w}": v for (t, w), v in items.items()}}
    print(f"shelfml: label prior: paths T={cfg.path_temperature} weight {cfg.weight}, brands T={cfg.temperature} "
          f"weight {cfg.brand_weight} (validation item accuracy {best})", file=sys.stderr)
    return {**tagger.prior.describe(), "path": PRIOR_DIR, "validation_search": search}
