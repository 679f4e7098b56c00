"""Triton python model ``price``: text (+ the picture file's bytes) -> price and a has-picture flag.

Tokenises the text, decodes the picture (a missing or corrupt one is flagged, not an error: the
model was trained to price products without one), and runs the ``price_regressor`` graph through
BLS (``runner: bls``) or in-process (``runner: inprocess``). A model trained with the neighbour
feature first finds the text's neighbours (the ``embedder`` leaf + the FAISS index shipped in its
assets). Names and dtypes come from config.pbtxt. Imports no torch.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from shelfml.price.service import PriceService
        from shelfml.checkpoint import read_manifest
        from shelfml.drift import DRIFT_WINDOW
        from shelfml.integrity import verify
        from shelfml.monitoring import PriceMetrics, ServedMetrics
        from shelfml.serving import bls_runner, inprocess_runner, served_config

        config, params = served_config(args)
        here, version = Path(args["model_repository"]), args["model_version"]  # version N runs its leaves' N
        leaf, embedder = params["regressor_model"], params.get("embedder_model")

        def runner(model, output):  # a leaf graph: in-process ONNX Runtime or a BLS request
            if params["runner"] == "inprocess":  # it loads the leaf's file itself: check it too
                verify(here.parent, model)
                return inprocess_runner(here.parent, model, output, version)
            return bls_runner(pb_utils, model, output, int(version))

        assets = here / version / params["assets"]
        manifest = read_manifest(assets, task="price", weights=False)
        self.service = PriceService(assets, runner(leaf, "price"),
                                    max_batch=int(params["leaf_max_batch"]),
                                    embed=runner(embedder, "embedding") if embedder else None)
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        self.version = int(version)
        on = params.get("metrics", "on") == "on"  # off only to measure what they cost
        self.metrics = ServedMetrics(pb_utils, args["model_name"], version) if on else None
        self.predictions = on and PriceMetrics(pb_utils, self.metrics.publisher, args["model_name"], version, manifest,
                                         int(params.get("drift_window") or DRIFT_WINDOW))

    def parse(self, request):
        from shelfml.serving import text_and_pictures

        return text_and_pictures(pb_utils, request)

    def finalize(self):
        if self.metrics is not None:
            self.metrics.close()

    def execute(self, requests):
        from shelfml.serving import execute

        return execute(pb_utils, requests, self.parse, self.run, self.dtypes, self.metrics)

    def run(self, texts, pictures):
        import numpy as np

        outputs = self.service.price(texts, pictures)
        if self.predictions:
            self.predictions.observe(texts, outputs)
        return {**outputs, "model_version": np.full((len(texts), 1), self.version, np.int64)}
