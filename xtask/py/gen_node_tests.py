"""Writes the ONNX backend node tests from the installed `onnx` wheel.

Recent wheels ship the test generators (`onnx.backend.test.case.node`), not
the data. Each case becomes DIR/<name>/model.onnx plus
test_data_set_0/input_J.pb and output_J.pb, and DIR/<name>/meta.json with
the case's tolerances. Cases whose inputs or outputs are not plain tensors
(sequences, maps, optionals) are written with meta "non_tensor": true so the
runner can count them as unsupported.
"""

import json
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.case.node import collect_testcases


def is_tensor(vi):
    return vi.type.HasField("tensor_type")


def main(out):
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    count = 0
    for case in collect_testcases():
        d = os.path.join(out, case.name)
        os.makedirs(d)
        model = case.model
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(model.SerializeToString())
        graph = model.graph
        tensors_only = all(is_tensor(v) for v in list(graph.input) + list(graph.output))
        meta = {
            "op": graph.node[0].op_type if len(graph.node) == 1 else None,
            "rtol": case.rtol,
            "atol": case.atol,
            "non_tensor": not tensors_only,
        }
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(meta, f, sort_keys=True)
        if not tensors_only:
            count += 1
            continue
        for i, (inputs, outputs) in enumerate(case.data_sets):
            ds = os.path.join(d, f"test_data_set_{i}")
            os.makedirs(ds)
            for kind, values, infos in (("input", inputs, graph.input), ("output", outputs, graph.output)):
                for j, value in enumerate(values):
                    if isinstance(value, onnx.TensorProto):
                        proto = value
                    else:
                        proto = numpy_helper.from_array(np.asarray(value), infos[j].name)
                    with open(os.path.join(ds, f"{kind}_{j}.pb"), "wb") as f:
                        f.write(proto.SerializeToString())
        count += 1
    print(f"wrote {count} node tests to {out} (onnx {onnx.__version__})")


if __name__ == "__main__":
    main(sys.argv[1])
