"""Triton python model ``price``: text (+ the picture file's bytes) -> price and a has-picture flag.

Tokenises the text, decodes the picture (a missing or corrupt one is flagged, not an error: the
model was trained to price products without one), and runs the ``price_regressor`` graph through
BLS (``runner: bls``) or in-process (``runner: inprocess``). A model trained with the neighbour
feature first finds the text's neighbours (the ``embedder`` leaf + the FAISS index shipped in its
assets). Names and dtypes come from config.pbtxt. Imports no torch.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from shelfml.price.service import PriceService
        from shelfml.integrity import verify
        from shelfml.serving import ServedMetrics, bls_runner, check_numpy, inprocess_runner

        check_numpy()
        verify(Path(args["model_repository"]).parent, args["model_name"])  # the files this model loads
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = Path(args["model_repository"])
        leaf, embedder = params["regressor_model"], params.get("embedder_model")

        def runner(model, output):  # a leaf graph: in-process ONNX Runtime or a BLS request
            if params["runner"] == "inprocess":  # it loads the leaf's file itself: check it too
                verify(here.parent, model)
                return inprocess_runner(here.parent, model, output)
            return bls_runner(pb_utils, model, output)

        self.service = PriceService(here / args["model_version"] / params["assets"], runner(leaf, "price"),
                                    max_batch=int(params["leaf_max_batch"]),
                                    embed=runner(embedder, "embedding") if embedder else None)
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        self.metrics = ServedMetrics(pb_utils, args["model_name"])

    def parse(self, request):
        from shelfml.serving import RequestError, decode_texts

        texts = decode_texts(pb_utils.get_input_tensor_by_name(request, "text").as_numpy())
        image = pb_utils.get_input_tensor_by_name(request, "image")
        pictures = [b""] * len(texts) if image is None else [bytes(b) for b in image.as_numpy().reshape(-1)]
        if len(pictures) != len(texts):
            raise RequestError(f"{len(texts)} texts but {len(pictures)} images")
        return texts, pictures

    def execute(self, requests):
        from shelfml.serving import execute

        return execute(pb_utils, requests, self.parse, self.service.price, self.dtypes, self.metrics)
