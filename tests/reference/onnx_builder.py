"""Turn a :class:`netspec.NetSpec` into an ``onnx.ModelProto`` with ``onnx.helper`` only.

Every node gets a name (the layer's name; a MatMul with a bias is the MatMul node ``name`` plus an
Add node ``name + "_bias"``), the batch dim is dynamic (``"N"``), the opset is the spec's (13 to 18
handled: Squeeze/Unsqueeze axes and ReduceMean axes move from attributes to inputs), and ir_version
is the lowest the opset needs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .netspec import NetSpec


def build_model(spec: NetSpec, check: bool = True, dynamic_spatial: bool = False
                ) -> onnx.ModelProto:
    """The ONNX model of ``spec``; ``dynamic_spatial`` makes the input's spatial dims symbolic
    (the graph output keeps a shape field, with symbolic dims where they then vary)."""
    nodes, inits = [], []
    opset = spec.opset

    def init(name, arr, dtype=None):
        arr = np.asarray(arr, dtype=dtype)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    for L in spec.layers:
        a, p, n = L.attrs, L.params, L.name
        x = L.inputs
        out = L.output
        if L.op == "Conv":
            ins = [x[0], init(f"{n}.weight", p["W"])]
            if "B" in p:
                ins.append(init(f"{n}.bias", p["B"]))
            kw = dict(kernel_shape=list(p["W"].shape[2:]), strides=a["strides"],
                      dilations=a["dilations"], group=a["group"])
            if "auto_pad" in a:
                kw["auto_pad"] = a["auto_pad"]
            else:
                kw["pads"] = a["pads"]
            nodes.append(helper.make_node("Conv", ins, [out], name=n, **kw))
        elif L.op == "Gemm":
            ins = [x[0], init(f"{n}.weight", p["W"])]
            if "C" in p:
                ins.append(init(f"{n}.bias", p["C"]))
            nodes.append(helper.make_node("Gemm", ins, [out], name=n, transA=0,
                                          transB=a["transB"], alpha=a["alpha"], beta=a["beta"]))
        elif L.op == "MatMul":
            w = init(f"{n}.weight", p["W"])
            if "B" in p:
                mid = f"{n}_mm"
                nodes.append(helper.make_node("MatMul", [x[0], w], [mid], name=n))
                nodes.append(helper.make_node("Add", [mid, init(f"{n}.bias", p["B"])], [out],
                                              name=f"{n}_bias"))
            else:
                nodes.append(helper.make_node("MatMul", [x[0], w], [out], name=n))
        elif L.op == "BatchNormalization":
            ins = [x[0]] + [init(f"{n}.{k}", p[k]) for k in ("scale", "B", "mean", "var")]
            nodes.append(helper.make_node("BatchNormalization", ins, [out], name=n,
                                          epsilon=a["epsilon"]))
        elif L.op in ("Relu", "Sigmoid", "Tanh", "GlobalAveragePool", "Identity"):
            nodes.append(helper.make_node(L.op, [x[0]], [out], name=n))
        elif L.op == "Dropout":
            nodes.append(helper.make_node("Dropout", [x[0]], [out], name=n))
        elif L.op == "LeakyRelu":
            nodes.append(helper.make_node("LeakyRelu", [x[0]], [out], name=n, alpha=a["alpha"]))
        elif L.op == "Clip":
            ins = [x[0], init(f"{n}.min", np.float32(a["min"])), init(f"{n}.max",
                                                                        np.float32(a["max"]))]
            nodes.append(helper.make_node("Clip", ins, [out], name=n))
        elif L.op == "MaxPool":
            nodes.append(helper.make_node("MaxPool", [x[0]], [out], name=n, **a))
        elif L.op == "AveragePool":
            nodes.append(helper.make_node("AveragePool", [x[0]], [out], name=n, **a))
        elif L.op == "ReduceMean":
            if opset >= 18:
                nodes.append(helper.make_node(
                    "ReduceMean", [x[0], init(f"{n}.axes", a["axes"], np.int64)], [out], name=n,
                    keepdims=a["keepdims"]))
            else:
                nodes.append(helper.make_node("ReduceMean", [x[0]], [out], name=n,
                                              axes=a["axes"], keepdims=a["keepdims"]))
        elif L.op in ("Add", "Sum"):
            nodes.append(helper.make_node(L.op, list(x), [out], name=n))
        elif L.op == "Concat":
            nodes.append(helper.make_node("Concat", list(x), [out], name=n, axis=a["axis"]))
        elif L.op == "Flatten":
            nodes.append(helper.make_node("Flatten", [x[0]], [out], name=n, axis=a["axis"]))
        elif L.op == "Reshape":
            nodes.append(helper.make_node(
                "Reshape", [x[0], init(f"{n}.shape", a["shape"], np.int64)], [out], name=n))
        elif L.op in ("Squeeze", "Unsqueeze"):
            if opset >= 13:
                nodes.append(helper.make_node(
                    L.op, [x[0], init(f"{n}.axes", a["axes"], np.int64)], [out], name=n))
            else:
                nodes.append(helper.make_node(L.op, [x[0]], [out], name=n, axes=a["axes"]))
        elif L.op == "Transpose":
            nodes.append(helper.make_node("Transpose", [x[0]], [out], name=n, perm=a["perm"]))
        elif L.op == "Pad":
            nodes.append(helper.make_node(
                "Pad", [x[0], init(f"{n}.pads", a["pads"], np.int64)], [out], name=n,
                mode="constant"))
        elif L.op == "ReduceSum":  # axes became an input at opset 13
            if opset >= 13:
                nodes.append(helper.make_node(
                    "ReduceSum", [x[0], init(f"{n}.axes", a["axes"], np.int64)], [out], name=n,
                    keepdims=a["keepdims"]))
            else:
                nodes.append(helper.make_node("ReduceSum", [x[0]], [out], name=n,
                                              axes=a["axes"], keepdims=a["keepdims"]))
        elif L.op == "Gather":
            nodes.append(helper.make_node(
                "Gather", [x[0], init(f"{n}.indices", a["indices"], np.int64)], [out], name=n,
                axis=a["axis"]))
        elif L.op == "Slice":
            ins = [x[0]] + [init(f"{n}.{k}", a[k], np.int64) for k in ("starts", "ends", "axes",
                                                                         "steps")]
            nodes.append(helper.make_node("Slice", ins, [out], name=n))
        elif L.op == "Resize":
            nodes.append(_resize_node(L, init, opset))
        elif L.op == "Affine":
            c = init(f"{n}.const", a["const"], np.float32)
            ins = [c, x[0]] if a.get("reverse") else [x[0], c]
            nodes.append(helper.make_node(a["kind"], ins, [out], name=n))
        elif L.op == "Softmax":
            nodes.append(helper.make_node("Softmax", [x[0]], [out], name=n, axis=a["axis"]))
        else:
            raise ValueError(f"unknown op {L.op}")

    in_dims = list(spec.input_shape)
    out_dims = list(spec.shapes[spec.output])
    if dynamic_spatial:
        ch = spec.channel_axis - 1
        in_dims = [v if i == ch else f"S{i}" for i, v in enumerate(in_dims)]
        out_dims = [v if i == 0 or v == 1 else f"O{i}" for i, v in enumerate(out_dims)]
    inp = helper.make_tensor_value_info(spec.input_name, TensorProto.FLOAT, ["N"] + in_dims)
    outp = helper.make_tensor_value_info(spec.output, TensorProto.FLOAT, ["N"] + out_dims)
    graph = helper.make_graph(nodes, "reference_net", [inp], [outp], initializer=inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="sglrp-tests")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _resize_node(L, init, opset):
    """Resize (opset >= 11: X, roi, scales, sizes; opset 10: X, scales) or, below opset 10,
    Upsample (scales as an input at opset 9)."""
    a, n = L.attrs, L.name
    extra = {k: v for k, v in a.items() if k not in ("mode", "scales", "sizes", "roi")}
    if opset < 10:
        return helper.make_node("Upsample", [L.inputs[0], init(f"{n}.scales", a["scales"], np.float32)],
                                [L.output], name=n, mode=a["mode"])
    if opset == 10:
        return helper.make_node("Resize", [L.inputs[0], init(f"{n}.scales", a["scales"], np.float32)],
                                [L.output], name=n, mode=a["mode"])
    roi = init(f"{n}.roi", a["roi"], np.float32) if a.get("roi") is not None else ""
    if a.get("sizes") is not None:
        ins = [L.inputs[0], roi or init(f"{n}.roi", np.zeros(0), np.float32),
               init(f"{n}.scales", np.zeros(0), np.float32), init(f"{n}.sizes", a["sizes"], np.int64)]
    else:
        ins = [L.inputs[0], roi or init(f"{n}.roi", np.zeros(0), np.float32),
               init(f"{n}.scales", a["scales"], np.float32)]
    return helper.make_node("Resize", ins, [L.output], name=n, mode=a["mode"], **extra)
