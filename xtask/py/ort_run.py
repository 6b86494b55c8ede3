"""Runs an ONNX model with onnxruntime (CPU, all optimizations):
ort_run.py MODEL OUT_DIR INPUT.npy... ; writes OUT_DIR/ort_output_<i>.npy."""

import os
import sys

import numpy as np
import onnxruntime as ort


def main(model, out_dir, inputs):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.load(p) for i, p in zip(sess.get_inputs(), inputs)}
    for i, y in enumerate(sess.run(None, feeds)):
        np.save(os.path.join(out_dir, f"ort_output_{i}.npy"), y)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
