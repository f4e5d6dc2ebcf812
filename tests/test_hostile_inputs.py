"""Hostile and broken ONNX files: each gives a clear one-line error, its documented exit code and no
traceback on the command line, and the right exception class from the API.

ONNX files are untrusted input. The models are built here with onnx.helper (no other test module
is needed); the command line runs in-process through ``sglrp_onnx.cli.main`` and, for a few cases,
as ``python -m sglrp_onnx`` in a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sglrp_onnx
from sglrp_onnx import errors
from sglrp_onnx.cli import build_parser, main
from sglrp_onnx.errors import (
    EXIT_CODES,
    ModelLoadError,
    SglrpError,
    UnsafeModelError,
    UnsupportedModelError,
    UsageError,
)
from sglrp_onnx.io import MAX_TENSOR_ELEMENTS, load_model

OPSET = 17
IR_VERSION = 8
ROOT = Path(__file__).resolve().parents[1]

# -- tiny models --------------------------------------------------------------------------------


def _model(nodes, inputs, outputs, initializers, opset=OPSET, ir_version=IR_VERSION) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = ir_version
    return model


def classifier(dtype=TensorProto.FLOAT, middle_op="Relu", image="x", classes=5, size=8) -> onnx.ModelProto:
    """Conv -> <middle_op> -> GlobalAveragePool -> Flatten -> Gemm -> Softmax, image [N, 3, size, size]."""
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np_type), "w"),
        numpy_helper.from_array(np.full(4, 0.1, np_type), "b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (classes, 4)).astype(np_type), "wf"),
        numpy_helper.from_array(np.zeros(classes, np_type), "bf"),
    ]
    nodes = [
        helper.make_node("Conv", [image, "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node(middle_op, ["c"], ["r"], name="mid"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["scores"], transB=1, name="fc"),
        helper.make_node("Softmax", ["scores"], ["prob"], axis=1, name="softmax"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info(image, dtype, ["N", 3, size, size])],
        [helper.make_tensor_value_info("prob", dtype, ["N", classes])],
        inits,
    )


def feature_map_model() -> onnx.ModelProto:
    """A valid model whose only output is a 4-D feature map, not class scores."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["features"], name="conv")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [w],
    )


def two_input_model() -> onnx.ModelProto:
    """An image 'x' plus a second float input 'extra' that is added to the class scores."""
    model = classifier()
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 5]))
    graph.node[4].output[0] = "scores0"
    graph.node.insert(5, helper.make_node("Add", ["scores0", "extra"], ["scores"], name="add_extra"))
    return model


def quantize_model() -> onnx.ModelProto:
    """QuantizeLinear / DequantizeLinear in front of a float classifier."""
    model = classifier()
    graph = model.graph
    graph.initializer.extend([
        numpy_helper.from_array(np.array(0.05, np.float32), "qs"),
        numpy_helper.from_array(np.array(128, np.uint8), "qz"),
    ])
    graph.node[0].input[0] = "xd"
    graph.node.insert(0, helper.make_node("DequantizeLinear", ["xq", "qs", "qz"], ["xd"], name="dequantize_x"))
    graph.node.insert(0, helper.make_node("QuantizeLinear", ["x", "qs", "qz"], ["xq"], name="quantize_x"))
    return model


def qlinearconv_model() -> onnx.ModelProto:
    """A QLinearConv between Quantize and Dequantize, then a float head."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "z"),
        numpy_helper.from_array(rng.integers(0, 255, (4, 3, 3, 3)).astype(np.uint8), "wq"),
        numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
        numpy_helper.from_array(np.array(128, np.uint8), "wz"),
        numpy_helper.from_array(rng.normal(0, 0.5, (5, 4)).astype(np.float32), "wf"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="quantize"),
        helper.make_node("QLinearConv", ["xq", "s", "z", "wq", "ws", "wz", "s", "z"], ["cq"], pads=[1, 1, 1, 1], name="qconv"),
        helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["c"], name="dequantize"),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "wf"], ["scores"], name="fc"),
    ]
    inits[-1] = numpy_helper.from_array(rng.normal(0, 0.5, (4, 5)).astype(np.float32), "wf")
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5])],
        inits,
    )


def opset6_model() -> onnx.ModelProto:
    """A valid IR-3 / opset-6 classifier (initializers are also graph inputs, as IR 3 requires)."""
    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32),
        "wf": rng.normal(0, 0.5, (5, 4)).astype(np.float32),
        "bf": np.zeros((1, 5), np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["scores"], transB=1, broadcast=1, name="fc"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in arrays.items()]
    return _model(
        nodes, inputs, [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, k) for k, v in arrays.items()], opset=6, ir_version=3,
    )


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# -- running the command line -------------------------------------------------------------------


def cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code: int, err: str, expected_code: int, *needles: str) -> None:
    """One ``error: ...`` line, the documented exit code, no traceback, every needle present."""
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def convert_cli(capsys, path, out, *extra):
    return cli(capsys, "convert", path, "-o", out, "--preset", "raw", *extra)


# -- unreadable files ---------------------------------------------------------------------------


def _valid_bytes() -> bytes:
    return classifier().SerializeToString()


@pytest.mark.parametrize(
    "case, content, needle",
    [
        ("missing", None, "no such file"),
        ("empty", b"", "empty file"),
        ("random", np.random.default_rng(7).bytes(3000), "model"),
        ("text", b"this is not an onnx model\n" * 20, "model"),
    ],
)
def test_unreadable_file(tmp_path, capsys, case, content, needle):
    path = tmp_path / f"{case}.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=re.escape(str(path))) as caught:
        sglrp_onnx.convert(path, preset="raw")
    assert needle in str(caught.value)
    code, out, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, ModelLoadError.exit_code, str(path), needle)
    assert out == ""
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, -1])
def test_truncated_file(tmp_path, capsys, fraction):
    data = _valid_bytes()
    cut = len(data) - 1 if fraction == -1 else int(len(data) * fraction)
    path = save_bytes(tmp_path / "truncated.onnx", data[:cut])
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        sglrp_onnx.convert(path, preset="raw")
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 3, str(path))


def save_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_never_crash(tmp_path, seed):
    """Random bytes of random lengths: always a ModelLoadError, never another exception."""
    rng = np.random.default_rng(seed)
    path = save_bytes(tmp_path / "noise.onnx", rng.bytes(int(rng.integers(1, 5000))))
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        load_model(path)


def test_bytes_and_bad_types_from_the_api():
    with pytest.raises(ModelLoadError, match="<bytes>"):
        sglrp_onnx.convert(b"\x08\x07garbage", preset="raw")
    with pytest.raises(ModelLoadError, match="<bytes>: empty"):
        sglrp_onnx.convert(b"", preset="raw")
    with pytest.raises(UsageError, match="expected a path"):
        load_model(12345)


def test_folder_given_as_model(tmp_path, capsys):
    code, _, err = convert_cli(capsys, tmp_path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 3, str(tmp_path), "folder")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_and_device_are_not_read(tmp_path):
    """A FIFO (or /dev/zero) named as the model would block (or never end) if read: refused unread."""
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        if not path.exists():
            continue
        with pytest.raises(ModelLoadError, match="not a regular file"):
            load_model(path)


def test_checker_failure_names_file_and_node(tmp_path, capsys):
    model = classifier()
    model.graph.node[1].input[0] = "undefined_tensor"
    path = save(model, tmp_path / "broken.onnx")
    with pytest.raises(ModelLoadError, match="ONNX checker") as caught:
        sglrp_onnx.convert(path, preset="raw")
    assert str(path) in str(caught.value) and "undefined_tensor" in str(caught.value)
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 3, str(path), "ONNX checker", "undefined_tensor")


def test_raw_data_shorter_than_declared(tmp_path, capsys):
    model = classifier()
    weight = model.graph.initializer[0]
    del weight.dims[:]
    weight.dims.extend([4000, 3, 3, 3])  # 108 floats of data for 108000 declared
    path = save(model, tmp_path / "short.onnx")
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 3, str(path), "tensor name: w", "too small")


# -- absurd sizes -------------------------------------------------------------------------------


def test_initializer_declaring_10_to_12_elements(tmp_path, capsys):
    model = classifier()
    weight = model.graph.initializer[0]
    del weight.dims[:]
    weight.dims.extend([10**6, 10**6])
    path = save(model, tmp_path / "huge_init.onnx")
    with pytest.raises(UnsafeModelError, match=re.escape(str(path))) as caught:
        sglrp_onnx.convert(path, preset="raw")
    assert "'w'" in str(caught.value) and "1000000000000" in str(caught.value)
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 4, str(path), "'w'")


def test_negative_dimension(tmp_path):
    model = classifier()
    model.graph.initializer[1].dims[0] = -4
    path = save(model, tmp_path / "negative.onnx")
    with pytest.raises(UnsafeModelError, match="negative dimension"):
        load_model(path)


def test_graph_input_with_huge_static_dims(tmp_path, capsys):
    model = classifier()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = 10**9
    dims[3].dim_value = 10**9
    path = save(model, tmp_path / "huge_input.onnx")
    with pytest.raises(UnsafeModelError, match="graph input 'x'"):
        sglrp_onnx.convert(path, preset="raw")
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 4, str(path), "'x'")


def test_huge_shape_constant_is_refused_before_anything_is_allocated(tmp_path):
    """ConstantOfShape([2^20, 2^20]) would be a 4 TiB tensor if constant folding evaluated it."""
    model = classifier()
    model.graph.initializer.append(numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "big_shape"))
    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [0.0])
    model.graph.node.insert(0, helper.make_node("ConstantOfShape", ["big_shape"], ["big"], value=fill, name="bomb"))
    model.graph.node.insert(1, helper.make_node("ReduceSum", ["big"], ["big_sum"], keepdims=0, name="sum_bomb"))
    model.graph.node[-1].input[0] = "scores2"
    model.graph.node.insert(len(model.graph.node) - 1, helper.make_node("Add", ["scores", "big_sum"], ["scores2"], name="add_bomb"))
    onnx.checker.check_model(model)
    path = save(model, tmp_path / "bomb.onnx")
    with pytest.raises(UnsafeModelError, match="node 'bomb'") as caught:
        sglrp_onnx.convert(path, preset="raw")
    assert str(path) in str(caught.value)
    assert (1 << 40) > MAX_TENSOR_ELEMENTS


def _set_attribute(node: onnx.NodeProto, **values) -> None:
    for key, value in values.items():
        for attribute in [a for a in node.attribute if a.name == key]:
            node.attribute.remove(attribute)
        node.attribute.append(helper.make_attribute(key, value))


def test_inferred_shape_too_large_is_refused(tmp_path, capsys):
    """pads of 10^6 on an 8x8 image: a 1 KB file whose Conv output would hold 1.6e13 values."""
    model = classifier()
    _set_attribute(model.graph.node[0], pads=[10**6] * 4)
    path = save(model, tmp_path / "pads.onnx")
    with pytest.raises(UnsafeModelError, match="node 'conv'"):
        sglrp_onnx.convert(path, preset="raw")
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 4, str(path), "tensor 'c'", "2000006")


@pytest.mark.parametrize(
    "node_index, attributes, needle",
    [
        (0, {"strides": [0, 0]}, "strides must only contain positive values"),
        (0, {"pads": [-5, -5, -5, -5]}, "pads must not contain negative values"),
        (0, {"dilations": [0, 0]}, "dilations must only contain positive values"),
        (3, {"axis": 100}, "axis"),
        (5, {"axis": 7}, "axis"),
    ],
    ids=["stride_0", "negative_pads", "dilation_0", "flatten_axis", "softmax_axis"],
)
def test_invalid_attributes_fail_shape_inference_with_the_node_named(tmp_path, capsys, node_index, attributes, needle):
    """Before strict shape inference these gave a misleading 'no classifier output found' or an
    internal error from the engine's final check."""
    model = classifier()
    _set_attribute(model.graph.node[node_index], **attributes)
    path = save(model, tmp_path / "attributes.onnx")
    with pytest.raises(ModelLoadError, match="shape inference") as caught:
        sglrp_onnx.convert(path, preset="raw")
    assert needle in str(caught.value)
    assert f"node name: {model.graph.node[node_index].name}" in str(caught.value)
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 3, str(path), needle)


# -- external data ------------------------------------------------------------------------------

SECRET = "SECRET_outside_weights.bin"
_WATCHED_OPENS: list[str] = []
_WATCHING = [False]


def _audit(event, args):
    if event == "open" and _WATCHING[0] and args and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.fsdecode(os.fspath(args[0]))
        if "SECRET" in name:
            _WATCHED_OPENS.append(name)


sys.addaudithook(_audit)


def _external_model(folder: Path, location: str) -> Path:
    """A classifier whose weight 'w' lives in external data at ``location`` (relative to ``folder``)."""
    model = classifier()
    weight = model.graph.initializer[0]
    raw = numpy_helper.to_array(weight).tobytes()
    weight.ClearField("raw_data")
    del weight.float_data[:]
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, raw


def _outside_case(tmp_path: Path, kind: str):
    """(model path, outside target) for a model that points outside its folder in the way ``kind``."""
    folder = tmp_path / "models"
    outside = tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    target = outside / SECRET
    if kind == "absolute":
        location = str(target)
    elif kind == "dotdot":
        location = f"../elsewhere/{SECRET}"
    else:  # a symbolic link inside the folder that leads out of it
        os.symlink(target, folder / "link_to_SECRET.bin")
        location = "link_to_SECRET.bin"
    path, raw = _external_model(folder, location)
    return path, target, raw


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_external_data_outside_the_folder_is_refused_unread(tmp_path, capsys, kind):
    path, target, raw = _outside_case(tmp_path, kind)
    target.write_bytes(raw)  # the right bytes: reading them would make the conversion succeed
    _WATCHED_OPENS.clear()
    _WATCHING[0] = True
    try:
        with pytest.raises(UnsafeModelError, match="outside the model's folder") as caught:
            sglrp_onnx.convert(path, preset="raw")
        code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    finally:
        _WATCHING[0] = False
    assert str(path) in str(caught.value) and "'w'" in str(caught.value)
    assert_clean_error(code, err, 4, str(path), "outside the model's folder", "nothing was read")
    assert _WATCHED_OPENS == [], f"opened {_WATCHED_OPENS}"
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_external_data_outside_is_never_opened_end_to_end(tmp_path):
    """The outside targets are FIFOs: opening one for reading would block the command, so a run
    that ends (with exit code 4) within the timeout never opened them, from Python or C++."""
    cases = []
    for kind in ("absolute", "dotdot", "symlink"):
        base = tmp_path / kind
        base.mkdir()
        path, target, _ = _outside_case(base, kind)
        os.mkfifo(target)
        cases.append(path)
    script = (
        "import sys\nfrom sglrp_onnx.cli import main\n"
        "codes = [main(['convert', p, '-o', p + '.out', '--preset', 'raw']) for p in sys.argv[1:]]\n"
        "print(codes)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, cases)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.stdout.strip() == "[4, 4, 4]", result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("outside the model's folder") == 3


def test_external_data_inside_the_folder_still_works(tmp_path):
    """Control for the tests above: a model with its weights beside it converts."""
    folder = tmp_path / "models"
    folder.mkdir()
    path, raw = _external_model(folder, "weights.bin")
    (folder / "weights.bin").write_bytes(raw)
    converted = sglrp_onnx.convert(path, preset="raw")
    assert not any(t.data_location == TensorProto.EXTERNAL for t in converted.graph.initializer)
    assert "relevance" in [o.name for o in converted.graph.output]


@pytest.mark.parametrize(
    "content, error, needle",
    [
        (None, ModelLoadError, "missing"),
        (b"\0" * 12, ModelLoadError, "wants bytes"),  # shorter than offset + length
        ("folder", UnsafeModelError, "not a regular file"),
    ],
)
def test_external_data_missing_short_or_not_a_file(tmp_path, content, error, needle):
    folder = tmp_path / "models"
    folder.mkdir()
    path, _ = _external_model(folder, "weights.bin")
    if content == "folder":
        (folder / "weights.bin").mkdir()
    elif content is not None:
        (folder / "weights.bin").write_bytes(content)
    with pytest.raises(error, match=needle) as caught:
        load_model(path)
    assert str(path) in str(caught.value)


def test_external_data_length_must_match_the_tensor(tmp_path):
    """A length that does not match the declared dims is refused (no reading of arbitrary amounts)."""
    folder = tmp_path / "models"
    folder.mkdir()
    path, raw = _external_model(folder, "weights.bin")
    (folder / "weights.bin").write_bytes(raw * 4)
    model = onnx.load(path, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "length":
            entry.value = str(len(raw) * 3)
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match=f"needs {len(raw)} bytes"):
        load_model(path)


def test_external_data_in_a_subgraph_is_checked_too(tmp_path):
    """Tensors in If/Loop bodies are checked like top-level ones (onnx loads those as well)."""
    model = classifier()
    evil = TensorProto(name="evil", data_type=TensorProto.FLOAT, dims=[1], data_location=TensorProto.EXTERNAL)
    entry = evil.external_data.add()
    entry.key, entry.value = "location", f"../{SECRET}"
    body = helper.make_graph(
        [helper.make_node("Identity", ["evil"], ["o"])], "body", [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])], [evil],
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=body, else_branch=body, name="if"))
    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / SECRET).write_bytes(b"\0\0\0\0")
    path = save(model, folder / "model.onnx")
    with pytest.raises(UnsafeModelError, match="'evil' points to external data outside"):
        load_model(path)


def test_external_data_from_bytes_is_refused():
    folder_less = classifier()
    weight = folder_less.graph.initializer[0]
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    with pytest.raises(UnsafeModelError, match="external data"):
        load_model(folder_less.SerializeToString())


# -- models the engine cannot explain -------------------------------------------------------------


def test_unsupported_operator_names_node_op_and_shapes(tmp_path, capsys):
    path = save(classifier(middle_op="Sin"), tmp_path / "sin.onnx")
    with pytest.raises(UnsupportedModelError) as caught:
        sglrp_onnx.convert(path, preset="raw")
    message = str(caught.value)
    assert "'mid'" in message and "Sin" in message and "[?,4,8,8]" in message
    out = tmp_path / "out.onnx"
    code, _, err = convert_cli(capsys, path, out)
    assert_clean_error(code, err, 5, str(path), "'mid'", "Sin", "[?,4,8,8]")
    assert not out.exists()


def test_feature_map_output_is_not_a_classifier(tmp_path, capsys):
    path = save(feature_map_model(), tmp_path / "features.onnx")
    with pytest.raises(UnsupportedModelError, match="no classifier output") as caught:
        sglrp_onnx.convert(path, preset="raw")
    assert "features[?,4,8,8]" in str(caught.value)
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 5, str(path), "features")


def test_several_float_inputs_need_input_option(tmp_path, capsys):
    path = save(two_input_model(), tmp_path / "two.onnx")
    onnx.checker.check_model(onnx.load(path))
    with pytest.raises(UsageError, match="--input") as caught:
        sglrp_onnx.convert(path, preset="raw")
    assert "x" in str(caught.value) and "extra" in str(caught.value)
    out = tmp_path / "out.onnx"
    code, _, err = convert_cli(capsys, path, out)
    assert_clean_error(code, err, 2, str(path), "--input")
    assert not out.exists()
    code, stdout, err = convert_cli(capsys, path, out, "--input", "x")
    assert code == 0, err
    written = onnx.load(out)
    meta = {p.key: p.value for p in written.metadata_props}
    assert meta["sglrp_onnx.image_input"] == "x"
    assert {"x", "extra", "target"} <= {i.name for i in written.graph.input}
    code, _, err = convert_cli(capsys, path, tmp_path / "o2.onnx", "--input", "nope")
    assert_clean_error(code, err, 2, "'nope'")


def test_float64_is_refused_clearly(tmp_path, capsys):
    model = classifier(dtype=TensorProto.DOUBLE)
    onnx.checker.check_model(model, full_check=True)
    path = save(model, tmp_path / "double.onnx")
    with pytest.raises(UnsupportedModelError) as caught:
        sglrp_onnx.convert(path, preset="raw")
    message = str(caught.value)
    assert "'x'" in message and "DOUBLE" in message and "float32" in message
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 5, str(path), "DOUBLE", "float32")


def test_float16_model_converts(tmp_path, capsys):
    """float16 models are supported (relevance computed in float32, see tests/test_float16.py)."""
    path = save(classifier(dtype=TensorProto.FLOAT16), tmp_path / "half.onnx")
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert code == 0, err
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)


@pytest.mark.parametrize("builder, op", [(quantize_model, "QuantizeLinear"), (qlinearconv_model, "QLinearConv")])
def test_quantised_models_are_refused(tmp_path, capsys, builder, op):
    model = builder()
    onnx.checker.check_model(model, full_check=True)
    path = save(model, tmp_path / "quantised.onnx")
    with pytest.raises(UnsupportedModelError, match="quantised") as caught:
        sglrp_onnx.convert(path, preset="raw")
    assert op in str(caught.value)
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 5, str(path), "quantised", op)


def test_opset_below_7_is_refused(tmp_path, capsys):
    model = opset6_model()
    onnx.checker.check_model(model)
    path = save(model, tmp_path / "opset6.onnx")
    with pytest.raises(UnsupportedModelError, match="opset 6"):
        sglrp_onnx.convert(path, preset="raw")
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 5, str(path), "opset 6")


def test_custom_domain_operator_is_refused(tmp_path, capsys):
    model = classifier()
    model.graph.node[1].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = save(model, tmp_path / "custom.onnx")
    code, _, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert_clean_error(code, err, 5, str(path), "'mid'", "com.example")


# -- the command line itself ----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "random", "unsupported", "usage"])
def test_subprocess_cli_no_traceback(tmp_path, case):
    """`python -m sglrp_onnx convert` as a user runs it: one line, documented code, no traceback."""
    path = tmp_path / f"{case}.onnx"
    extra = ["--preset", "raw"]
    expected = {"missing": 3, "random": 3, "unsupported": 5, "usage": 2}[case]
    if case == "random":
        path.write_bytes(np.random.default_rng(3).bytes(777))
    elif case == "unsupported":
        save(classifier(middle_op="Sin"), path)
    elif case == "usage":
        save(classifier(), path)
        extra += ["--method", "lrp", "--contrast", "signed"]
    result = subprocess.run(
        [sys.executable, "-m", "sglrp_onnx", "convert", str(path), "-o", str(tmp_path / "out.onnx"), *extra],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == expected, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_unexpected_exception_is_one_line_with_debug_hint(tmp_path, capsys, monkeypatch):
    path = save(classifier(), tmp_path / "model.onnx")

    def broken(*args, **kwargs):
        raise RuntimeError("something deep went wrong\nsecond line")

    monkeypatch.setattr(sglrp_onnx, "convert", broken)
    code, out, err = convert_cli(capsys, path, tmp_path / "out.onnx")
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0] == "internal error: RuntimeError: something deep went wrong"
    assert len(lines) == 2 and "--debug" in lines[1]
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(RuntimeError, match="something deep"):  # --debug shows the real exception
        main(["convert", str(path), "-o", str(tmp_path / "out.onnx"), "--debug"])
    with pytest.raises(RuntimeError):
        main(["--debug", "convert", str(path), "-o", str(tmp_path / "out.onnx")])


def test_multi_line_errors_become_one_line(tmp_path, capsys, monkeypatch):
    def raising(*args, **kwargs):
        raise UnsupportedModelError("first part\n  second part")

    monkeypatch.setattr(sglrp_onnx, "convert", raising)
    code, _, err = convert_cli(capsys, tmp_path / "m.onnx", tmp_path / "o.onnx")
    assert_clean_error(code, err, 5, f"{tmp_path / 'm.onnx'}: first part second part")


def test_interrupt_exits_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sglrp_onnx, "convert", interrupted)
    code, _, err = convert_cli(capsys, save(classifier(), tmp_path / "m.onnx"), tmp_path / "o.onnx")
    assert code == 130 and err.strip() == "interrupted"


def test_broken_pipe_exits_quietly(tmp_path):
    script = (
        "import sys, sglrp_onnx\nfrom sglrp_onnx.cli import main\n"
        "def gone(*a, **k):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
        "sglrp_onnx.convert = gone\n"
        "sys.exit(main(['convert', sys.argv[1], '-o', sys.argv[2]]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m.onnx"), str(tmp_path / "o.onnx")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 141 and result.stderr == ""
    assert EXIT_CODES[141]


def test_sglrp_errors_reraise_with_debug(tmp_path):
    with pytest.raises(ModelLoadError):
        main(["--debug", "convert", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx")])


def test_bad_options_exit_2(tmp_path, capsys):
    code, _, err = cli(capsys, "convert", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--method", "nonsense")
    assert code == 2 and "Traceback" not in err and "invalid choice" in err


# -- the exit-code table --------------------------------------------------------------------------


def test_one_exception_class_and_code_per_kind():
    classes = [errors.UsageError, errors.ModelLoadError, errors.UnsafeModelError, errors.UnsupportedModelError,
               errors.RuleError, errors.InputError, errors.OutputError]
    codes = [cls.exit_code for cls in classes]
    assert codes == [2, 3, 4, 5, 6, 7, 8]
    assert all(issubclass(cls, SglrpError) for cls in classes)
    assert set(codes) <= set(EXIT_CODES)
    assert EXIT_CODES[1].lower().startswith("unexpected internal error")


def test_help_epilog_lists_every_exit_code(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    table = text[text.index("exit codes"):]
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"^\s*{code}\s+{re.escape(meaning)}$", table, re.M), (code, meaning)


def test_docs_errors_md_matches_the_code():
    """docs/errors.md has one table row per exit code, with the exception class of each."""
    doc = (ROOT / "docs" / "errors.md").read_text()
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\|\s*(\d+)\s*\|.*$", doc, re.M)}
    assert set(rows) == set(EXIT_CODES), sorted(rows)
    for cls in errors.ERROR_CLASSES:
        assert cls.__name__ in rows[cls.exit_code], cls


# -- known engine bugs (outside this module's files; see the report) ------------------------------



def test_forged_metadata_gives_a_clear_error():
    model = classifier()
    model.metadata_props.add(key="sglrp_onnx.version", value="0.1.0")
    model.metadata_props.add(key="sglrp_onnx.original_outputs", value="not json")
    with pytest.raises(SglrpError):
        sglrp_onnx.convert(model, preset="raw")



@pytest.mark.parametrize("group", [0, 7])
def test_bad_conv_group_gives_a_clear_error(group):
    model = classifier()
    _set_attribute(model.graph.node[0], group=group)
    with pytest.raises(SglrpError, match="conv"):
        sglrp_onnx.convert(model, preset="raw")



def test_conv_kernel_shape_contradicting_the_weight():
    model = classifier()
    _set_attribute(model.graph.node[0], kernel_shape=[5, 5])
    with pytest.raises((ModelLoadError, UnsupportedModelError), match="conv"):
        sglrp_onnx.convert(model, preset="raw")



def test_api_errors_name_the_file(tmp_path):
    path = save(classifier(middle_op="Sin"), tmp_path / "sin.onnx")
    with pytest.raises(UnsupportedModelError, match=re.escape(str(path))):
        sglrp_onnx.convert(path, preset="raw")
