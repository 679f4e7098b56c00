"""Stage `model_repository`: exports -> a Triton model repository, and the server that runs it.

    build.py      `shelfml repository`: leaf + python models, config.pbtxt (stock) and configs/cpu.pbtxt
    models/       the model.py sources copied into the repository (tagger, price, ONNX Runtime leaf)
    services.py   what those models do, testable without Triton (request checks, decode loop, pictures)
    server.py     `shelfml serve`: the tritonserver binary from nvidia-pytriton, ports, readiness, clean stop
"""
