"""Triton python model ``tagger``: text -> category path, brand, confidence, calibrated per-level probabilities,
back-off path, abstention and the top-k paths (parameters ``thresholds`` and ``top_k`` override the defaults).

Tokenises the text and runs the project's one taxonomy-constrained greedy decode loop, whose step
function calls the ``tagger_encoder``/``tagger_decoder`` leaves through BLS (``runner: bls``) or runs
their ONNX files in-process (``runner: inprocess``). A tagger trained with retrieval finds its
neighbours first (the ``embedder`` leaf's MiniLM + the FAISS index shipped in its assets), so a client
sends only text. Through BLS the KV cache stays in the memory the leaves answered in (the GPU on a GPU
instance), passed from response to request by DLPack; only the logits come to the host. Names and dtypes come
from config.pbtxt. Imports no torch (on a GPU instance the logits come to the host through torch or CuPy).
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from shelfml.checkpoint import read_manifest
        from shelfml.drift import DRIFT_WINDOW
        from shelfml.integrity import verify
        from shelfml.labels import Taxonomy, check_taxonomy
        from shelfml.monitoring import ServedMetrics, TaggerMetrics
        from shelfml.serving import bls_runner, inprocess_runner, served_config
        from shelfml.tagger.runners import bls_step_factory, inprocess_step_factory
        from shelfml.tagger.service import SERVED_TOP_K, TaggerService

        config, params = served_config(args)
        here, version = Path(args["model_repository"]), args["model_version"]  # version N runs its leaves' N
        encoder, decoder = params["encoder_model"], params["decoder_model"]
        embedder = params.get("embedder_model")
        if params["runner"] == "inprocess":  # it loads the leaves' files itself: check them too
            for leaf in filter(None, (encoder, decoder, embedder)):
                verify(here.parent, leaf)
            make_step = inprocess_step_factory(here.parent, encoder, decoder, version)
            embed = embedder and inprocess_runner(here.parent, embedder, "embedding", version)
        else:
            outputs = json.loads(params["leaf_outputs"])
            device = "gpu" if args.get("model_instance_kind") == "GPU" else "cpu"  # where the leaves keep the cache
            graph = json.loads((here.parent / decoder / version / "graph.json").read_text(encoding="utf-8"))
            one_token = graph["spec"]["inputs"][0]["dims"][1] == 1  # a decoder exported before jump-forward
            make_step = bls_step_factory(pb_utils, encoder, decoder, outputs[encoder], outputs[decoder], device,
                                         one_token, int(version))
            embed = embedder and bls_runner(pb_utils, embedder, "embedding", int(version))
        assets = here / version / params["assets"]
        self.service = TaggerService(assets, make_step, max_batch=int(params["leaf_max_batch"]), embed=embed or None,
                                     thresholds=params.get("thresholds") or None,
                                     top_k=int(params.get("top_k") or SERVED_TOP_K))
        self.input = config["input"][0]["name"]
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        manifest = read_manifest(assets, task="tagger", weights=False)
        if params.get("taxonomy_sha256"):  # the taxonomy the repository (and its catalog model) was built for
            check_taxonomy(params["taxonomy_sha256"],
                           {f"tagger version {version}": Taxonomy.from_dict(manifest["taxonomy"]).sha256()})
        self.version = int(version)
        on = params.get("metrics", "on") == "on"  # off only to measure what they cost
        self.metrics = ServedMetrics(pb_utils, args["model_name"], version) if on else None
        self.predictions = on and TaggerMetrics(pb_utils, self.metrics.publisher, args["model_name"], version, manifest,
                                         int(params.get("drift_window") or DRIFT_WINDOW))

    def parse(self, request):
        from shelfml.serving import decode_texts

        return (decode_texts(pb_utils.get_input_tensor_by_name(request, self.input).as_numpy(), self.input),)

    def run(self, texts):
        import numpy as np

        outputs = self.service.outputs(self.service.tag(texts))
        if self.predictions:
            self.predictions.observe(texts, outputs)
        return {**outputs, "model_version": np.full((len(texts), 1), self.version, np.int64)}

    def finalize(self):
        if self.metrics is not None:
            self.metrics.close()

    def execute(self, requests):
        from shelfml.serving import execute

        return execute(pb_utils, requests, self.parse, self.run, self.dtypes, self.metrics)
