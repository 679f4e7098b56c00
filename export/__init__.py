"""Stage `export`: checkpoint -> the artifacts the server runs, with parity against eager PyTorch.

    contract.py   each served graph's inputs/outputs and shape ranges, declared once as data
    onnx.py       wrapper modules (T5 encoder, T5 decoder step with KV cache, price graph) -> ONNX
    runtime.py    ONNX Runtime sessions and runners (the T5 step function with I/O binding, the price runner)
    exporter.py   `shelfml export`: graphs + INT8 + assets + export.json (parity, hashes), written atomically
    tensorrt.py   FP16 TensorRT engines: profiles, precision constraints, engine cache, static checks
"""
