"""Stage `benchmarks`: ``shelfml bench``, backends x workloads with honest statistics (issue 7).

Files by role:

    workloads.py      the fixed workloads W1-W4 and their inputs (declared once, as data)
    timing.py         warm-up, interleaved repetitions, percentiles and throughput
    flops.py          GFLOPs per request from PyTorch's FLOP counter on the eager model
    backends.py       every backend as a callable (eager, ONNX Runtime, CTranslate2, CUDA ones) or a skip reason
    agreement.py      outputs of every backend compared before anything is timed
    serving.py        W4: the served tagger through Triton gRPC against the same in-process path
    perf_analyzer.py  Triton's perf_analyzer 2.51 (from the tritonclient 2.51.0 wheel) and its input-data JSON
    report.py         goals, Markdown report, README section and PNG plots from the JSON
    run.py            :func:`run_bench`: the matrix, in order, into one results JSON
"""

from shelfml.benchmarks.run import run_bench

__all__ = ["run_bench"]
