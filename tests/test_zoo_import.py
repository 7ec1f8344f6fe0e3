"""Every zoo model imports through our frontend and TVM's default build matches ORT."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from make_zoo import ZOO_MODELS
from tvm import relax

from ago_search.frontend import import_onnx, random_inputs

# The three largest zoo models take 7-30 s each here on 2 cores: `slow`, so that
# `-m "not slow"` keeps the small ones and CI runs them all.
ZOO_CASES = [
    pytest.param(name, marks=pytest.mark.slow)
    if name in {"mobilenetv2", "resnet18", "dbnet"}
    else name
    for name in ZOO_MODELS
]


@pytest.mark.parametrize("name", ZOO_CASES)
def test_zoo_model_imports_and_matches_ort(zoo, name):
    entry = zoo[name]
    imported = import_onnx(entry["path"], {k: tuple(v) for k, v in entry["inputs"].items()})
    assert [s.name for s in imported.inputs] == list(entry["inputs"])
    if entry["symbolic_dims"]:
        assert imported.fold.shape_nodes_folded > 0

    ret = imported.mod["main"].ret_ty
    out_shape = tuple(int(d) for d in ret.shape.values)
    assert out_shape == tuple(next(iter(entry["outputs"].values())))

    target = tvm.target.Target("llvm")
    ex = tvm.compile(imported.mod, target, relax_pipeline=relax.get_default_pipeline(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    feeds = random_inputs(imported.inputs, seed=7)
    out = vm["main"](*[tvm.runtime.tensor(feeds[s.name]) for s in imported.inputs]).numpy()
    ref = ort.InferenceSession(entry["path"]).run(None, feeds)[0]
    scale = float(np.abs(ref).max())
    assert np.abs(out - ref).max() <= 1e-4 * scale + 1e-6
