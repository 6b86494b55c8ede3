"""Times one model with onnxruntime or OpenVINO on the CPU:
bench_run.py ENGINE MODEL THREADS ITERS WARMUP SHAPES_JSON
ENGINE: ort | openvino | openvino-bf16. SHAPES_JSON maps input names to
shapes. Prints one JSON object: median/min latency in ms."""

import json
import statistics
import sys
import time

import numpy as np


def make_inputs(specs, shapes):
    """Random inputs: floats normal, masks ones, other integers 0/1."""
    rng = np.random.default_rng(0)
    feeds = {}
    for name, dtype in specs:
        shape = shapes[name]
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in name:
            feeds[name] = np.ones(shape, dtype=dtype)
        else:
            feeds[name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


def ort_runner(model, threads, shapes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32}
    specs = [(i.name, types[i.type]) for i in sess.get_inputs()]
    feeds = make_inputs(specs, shapes)
    return lambda: sess.run(None, feeds)


def openvino_runner(model, threads, shapes, precision):
    import openvino as ov

    core = ov.Core()
    m = core.read_model(model)
    m.reshape({i.get_any_name(): shapes[i.get_any_name()] for i in m.inputs})
    cfg = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
    }
    cm = core.compile_model(m, "CPU", cfg)
    specs = [(i.get_any_name(), i.get_element_type().to_dtype().type) for i in cm.inputs]
    feeds = make_inputs(specs, shapes)
    req = cm.create_infer_request()
    return lambda: req.infer(feeds)


def main(engine, model, threads, iters, warmup, shapes):
    threads, iters, warmup = int(threads), int(iters), int(warmup)
    shapes = json.loads(shapes)
    if engine == "ort":
        run = ort_runner(model, threads, shapes)
    elif engine == "openvino":
        run = openvino_runner(model, threads, shapes, "f32")
    elif engine == "openvino-bf16":
        run = openvino_runner(model, threads, shapes, "bf16")
    else:
        raise SystemExit(f"unknown engine {engine}")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"median_ms": statistics.median(times), "min_ms": min(times)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
