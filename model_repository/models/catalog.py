"""Triton python model ``catalog``: text (+ the picture file's bytes) -> path, brand, per-level confidence, price,
has-picture flag, the tagger and price versions that answered and each stage's time, in one request.

Calls the ``tagger`` and ``price`` models (their newest loaded version) through BLS, both at once. Refuses to
load when a tagger version on disk serves another taxonomy than the one the repository was built for. Names and
dtypes come from config.pbtxt. Imports no torch.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from shelfml.catalog import CatalogService, served_taxonomy_sha256
        from shelfml.labels import check_taxonomy
        from shelfml.monitoring import ServedMetrics
        from shelfml.serving import bls_call, served_config

        config, params = served_config(args)
        repo = Path(args["model_repository"]).parent
        check_taxonomy(params["taxonomy_sha256"], {f"tagger version {v}": sha for v, sha in
                                                   served_taxonomy_sha256(repo, params["tagger_model"]).items()})
        self.service = CatalogService(lambda model, inputs, outputs: bls_call(pb_utils, model, inputs, outputs))
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        on = params.get("metrics", "on") == "on"
        self.metrics = ServedMetrics(pb_utils, args["model_name"], args["model_version"]) if on else None

    def parse(self, request):
        from shelfml.serving import text_and_pictures

        return text_and_pictures(pb_utils, request)

    def finalize(self):
        if self.metrics is not None:
            self.metrics.close()

    def execute(self, requests):
        from shelfml.serving import execute

        return execute(pb_utils, requests, self.parse, self.service.run, self.dtypes, self.metrics)
