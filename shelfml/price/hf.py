"""The price checkpoint in the Hugging Face world: its model card (``PriceModel`` itself carries
``PyTorchModelHubMixin``'s ``from_pretrained``/``save_pretrained``)."""

from __future__ import annotations

import json


def model_card(manifest: dict) -> str:
    """A Hugging Face model card: YAML metadata, the target, the validation metrics, how to load and predict."""
    val = manifest.get("metrics", {}).get("validation", {})
    metrics = {k: round(val[k], 4) for k in ("smape", "mae", "rmse") if k in val}
    data, model = manifest["data"], manifest["model"]
    yaml = ["---", "library_name: shelfml", "pipeline_tag: tabular-regression", "tags:", "- shelfml",
            "- price-regression", "- pytorch_model_hub_mixin", "model-index:", "- name: shelfml-price",
            "  results:", "  - task: {type: tabular-regression, name: product price from title}",
            f"    dataset: {{name: {json.dumps(data['source'])}, type: catalog, revision: {data['fingerprint']}}}",
            "    metrics:"] + [f"    - {{type: {k}, value: {v}, name: validation {k.replace('_', ' ')}}}"
                              for k, v in metrics.items()] + ["---", ""]
    inputs = "text" + (" and an optional picture" if model.get("images") else "")
    body = f"""# shelfml price regressor

An encoder (`{manifest['encoder']['init']}`, {manifest['encoder']['pooling']} pooling) and an MLP head trained by
`shelfml train price` on `{data['source']}` ({data['rows']:,} rows, data fingerprint `{data['fingerprint']}`). It
reads a product's {inputs} and predicts log1p(price) (loss: {model['loss']}); the price is expm1 of it, clipped
at 0.

```python
from shelfml.price import PriceRegressor
from shelfml.price.model import PriceModel

model = PriceModel.from_pretrained(CKPT)           # Hugging Face PyTorchModelHubMixin: config.json + weights
prices = PriceRegressor.load(CKPT).predict(texts)  # tokenizer (CKPT/encoder) + model: prices in input order
```

Validation: {', '.join(f'{k} {v}' for k, v in metrics.items()) or 'not recorded'}.
"""
    return "\n".join(yaml) + body
