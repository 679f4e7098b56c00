"""Triton python model running one exported ONNX graph with ONNX Runtime, in-process.

The CPU stand-in for a stock ``onnxruntime_onnx`` / ``tensorrt_plan`` leaf (configs/cpu.pbtxt): the
same ``model.onnx``, the same input/output names (read from the config). Requests batched together
by Triton have the same shapes; each group of equal shapes runs as one call.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from shelfml.onnxrt import SessionConfig, load_session
        from shelfml.serving import leaf_file, served_config

        config, params = served_config(args)
        path = leaf_file(Path(args["model_repository"]).parent, args["model_name"], args["model_version"])
        threads = int(params.get("intra_op_threads", "0"))
        self.session = load_session(path, config=SessionConfig(intra_op_threads=threads))
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        groups = {}
        for i, feed in enumerate(feeds):
            groups.setdefault(tuple(feed[n].shape[1:] for n in self.inputs), []).append(i)
        responses = [None] * len(requests)
        for members in groups.values():
            merged = {n: np.concatenate([feeds[i][n] for i in members]) for n in self.inputs}
            try:
                results = self.session.run(self.outputs, merged)
            except Exception as e:  # a shape/value the graph rejects: this group's requests fail, the server stays up
                for i in members:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(str(e).splitlines()[0][:500], pb_utils.TritonError.INVALID_ARG))
                continue
            start = 0
            for i in members:
                rows = len(next(iter(feeds[i].values())))
                tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r[start:start + rows])) for n, r in zip(self.outputs, results)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += rows
        return responses
