"""``sglrp-onnx triton-repo``: the Triton model repository and the client example.

No Triton server runs here. The config is checked with Triton's own schema (the protobuf
``inference.ModelConfig`` from ``tritonclient.grpc.model_config_pb2``, parsed with protobuf's
``text_format``), and against the ONNX model written beside it: every input and output, its name,
data type (ONNX -> numpy -> Triton through tritonclient's own mapping) and dims. The client example
(tools/triton_client.py) runs against a stand-in for the server that applies Triton's documented
request rules (names, data types, dims without the batch axis, ``reshape``) to that config and runs
the model with ONNX Runtime; its answers must equal the Explainer's for the same photos.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("tritonclient.grpc", reason="the [triton] extra (tritonclient[grpc]) is installed by make test")

from google.protobuf import json_format, text_format  # noqa: E402
from tritonclient.grpc import InferResult, model_config_pb2, service_pb2  # noqa: E402
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype  # noqa: E402

from sglrp_onnx.cli import main  # noqa: E402
from sglrp_onnx.runtime import Explainer  # noqa: E402
from sglrp_onnx.serving.triton import triton_config  # noqa: E402
from tiny_models import plain_cnn, write_images  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16
K = 5


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def triton_type(value: onnx.ValueInfoProto) -> int:
    """The Triton DataType of an ONNX tensor through numpy and tritonclient's mapping."""
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return model_config_pb2.DataType.Value("TYPE_" + np_to_triton_dtype(np_dtype))


def onnx_shape(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def assert_matches_model(config, model: onnx.ModelProto) -> None:
    """Every model input/output is in the config, with its type and (batch-less) dims, and nothing else."""
    batching = config.max_batch_size > 0
    for listed, values in ((config.input, model.graph.input), (config.output, model.graph.output)):
        assert [t.name for t in listed] == [v.name for v in values]
        for tensor, value in zip(listed, values):
            assert tensor.data_type == triton_type(value), tensor.name
            shape = onnx_shape(value)
            if not batching:
                assert list(tensor.dims) == shape and not tensor.HasField("reshape"), tensor.name
            elif len(shape) == 1:  # [N] -> dims [1], reshaped to a scalar per request
                assert shape == [-1] and list(tensor.dims) == [1], tensor.name
                assert tensor.HasField("reshape") and list(tensor.reshape.shape) == []
            else:
                assert shape[0] == -1 and list(tensor.dims) == shape[1:], tensor.name
                assert not tensor.HasField("reshape")


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("triton")
    plain = base / "tiny.onnx"
    onnx.save(plain_cnn(num_classes=K, size=SIZE), plain)
    fixed = base / "fixed.onnx"
    onnx.save(plain_cnn(num_classes=K, size=SIZE, batch=2), fixed)
    blocked = plain_cnn(num_classes=K, size=SIZE)
    next(n for n in blocked.graph.node if n.name == "relu1").op_type = "Sin"  # no relevance rule for Sin
    unsupported = base / "sin.onnx"
    onnx.save(blocked, unsupported)
    photos = base / "photos"
    photos.mkdir()
    write_images(photos, sizes=((40, 30), (20, 50), (64, 64)))
    return {"base": base, "plain": plain, "fixed": fixed, "unsupported": unsupported,
            "photos": sorted(photos.iterdir())}


@pytest.fixture(scope="module")
def repository(models):
    out = models["base"] / "repo"
    code = main(["triton-repo", str(models["plain"]), str(out), "--preset", "imagenet",
                 "--max-batch", "2", "--instances", "2", "--gpu", "--name", "tiny_sglrp"])
    assert code == 0
    return out


def test_config_parses_with_triton_schema_and_matches_model(repository):
    folder = repository / "tiny_sglrp"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt"]
    config = parse_config(folder / "config.pbtxt")
    model = onnx.load(folder / "1" / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert config.name == "tiny_sglrp" and config.backend == "onnxruntime"
    assert config.max_batch_size == 2 and config.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]
    assert_matches_model(config, model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["sglrp_onnx.relevance_output"] == "relevance"  # the plain classifier was converted
    assert config.parameters["sglrp_onnx.preset"].string_value == "imagenet"
    assert config.parameters["sglrp_onnx.layout"].string_value == "NCHW"
    assert config.parameters["sglrp_onnx.target_input"].string_value == meta["sglrp_onnx.target_input"]


def test_augmented_model_is_served_as_it_is(models, tmp_path, capsys):
    converted = tmp_path / "tiny.sglrp.onnx"
    assert main(["convert", str(models["plain"]), "-o", str(converted), "--preset", "imagenet", "--method", "lrp"]) == 0
    code, err = run_cli(capsys, "triton-repo", converted, tmp_path / "repo", "--max-batch", "4")
    assert code == 0, err
    folder = tmp_path / "repo" / "tiny_sglrp"
    assert (folder / "1" / "model.onnx").read_bytes() == onnx.load(converted).SerializeToString()
    config = parse_config(folder / "config.pbtxt")
    assert config.max_batch_size == 4
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert config.parameters["sglrp_onnx.method"].string_value == "lrp"


def test_fixed_batch_needs_max_batch_0(models, tmp_path, capsys):
    out = tmp_path / "repo"
    code, err = run_cli(capsys, "triton-repo", models["fixed"], out, "--preset", "imagenet")
    assert code == 2
    assert "'image' has a fixed batch size of 2" in err and "--max-batch 0" in err
    assert not out.exists() and leftovers(tmp_path) == []
    code, err = run_cli(capsys, "triton-repo", models["fixed"], out, "--preset", "imagenet", "--max-batch", "0")
    assert code == 0, err
    config = parse_config(out / "fixed" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert_matches_model(config, onnx.load(out / "fixed" / "1" / "model.onnx"))
    assert list(config.input[0].dims) == [2, 3, SIZE, SIZE]


def test_existing_out_is_refused(models, tmp_path, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    code, err = run_cli(capsys, "triton-repo", models["plain"], out, "--preset", "imagenet")
    assert code == 8 and f"{out}: already exists" in err
    assert list(out.iterdir()) == []


def test_model_that_cannot_convert_leaves_nothing(models, tmp_path, capsys):
    out = tmp_path / "repo"
    code, err = run_cli(capsys, "triton-repo", models["unsupported"], out, "--preset", "imagenet")
    assert code == 5 and "Sin" in err and "'relu1'" in err
    code, err = run_cli(capsys, "triton-repo", models["plain"], out)  # zbox bounds missing: no preset
    assert code == 6 and "preset" in err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (("--max-batch", "-1"), "max batch size must be 0"),
    (("--instances", "0"), "instances must be at least 1"),
    (("--name", "../escape"), "not usable as a Triton model folder"),
])
def test_bad_options(models, tmp_path, capsys, args, message):
    code, err = run_cli(capsys, "triton-repo", models["plain"], tmp_path / "repo", "--preset", "imagenet", *args)
    assert code == 2 and message in err
    assert not (tmp_path / "repo").exists() and leftovers(tmp_path) == []


def test_dynamic_spatial_dims_become_minus_one(repository):
    model = onnx.load(repository / "tiny_sglrp" / "1" / "model.onnx")
    for value in (model.graph.input[0], model.graph.output[-1]):  # image and relevance: [N, 3, H, W]
        for axis, name in ((2, "H"), (3, "W")):
            value.type.tensor_type.shape.dim[axis].dim_param = name
    config = text_format.Parse(triton_config(model, "dyn").to_text(), model_config_pb2.ModelConfig())
    assert list(config.input[0].dims) == [3, -1, -1]
    assert list(config.output[-1].dims) == [3, -1, -1]
    assert_matches_model(config, model)


# -- the client example against a stand-in for the server ---------------------------------------------


class StandInTriton:
    """Answers ``get_model_config`` and ``infer`` as Triton does for one model of a repository:
    checks each request against the config (names, data types, batch size, dims), applies the
    config's ``reshape``, runs the model with ONNX Runtime and returns tritonclient's InferResult."""

    def __init__(self, folder: Path):
        import onnxruntime as ort

        self.config = parse_config(folder / "config.pbtxt")
        self.session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        self.requests = 0

    def get_model_config(self, model_name, as_json=False):
        assert model_name == self.config.name
        response = service_pb2.ModelConfigResponse(config=self.config)
        return json.loads(json_format.MessageToJson(response, preserving_proto_field_name=True))

    def infer(self, model_name, inputs, outputs=None):
        assert model_name == self.config.name
        self.requests += 1
        declared = {t.name: t for t in self.config.input}
        assert sorted(i.name() for i in inputs) == sorted(declared)
        feeds = {}
        for item in inputs:
            tensor = declared[item.name()]
            assert "TYPE_" + item.datatype() == model_config_pb2.DataType.Name(tensor.data_type)
            shape = list(item.shape())
            batch, dims = (shape[0], shape[1:]) if self.config.max_batch_size else (None, shape)
            if batch is not None:
                assert 1 <= batch <= self.config.max_batch_size
            assert len(dims) == len(tensor.dims)
            assert all(d == want or want == -1 for d, want in zip(dims, tensor.dims)), (dims, tensor.dims)
            array = np.frombuffer(item._get_content(), dtype=triton_to_np_dtype(item.datatype())).reshape(shape)
            if tensor.HasField("reshape"):
                array = array.reshape(([batch] if batch is not None else []) + list(tensor.reshape.shape))
            feeds[item.name()] = array
        names = [o.name() for o in outputs]
        values = dict(zip(names, self.session.run(names, feeds)))
        response = service_pb2.ModelInferResponse(model_name=model_name)
        declared_out = {t.name: t for t in self.config.output}
        for name in names:
            value = values[name]
            tensor = declared_out[name]
            if tensor.HasField("reshape"):  # back to the declared dims
                value = value.reshape([value.shape[0]] + list(tensor.dims))
            entry = response.outputs.add(name=name, datatype=np_to_triton_dtype(value.dtype))
            entry.shape.extend(value.shape)
            response.raw_output_contents.append(np.ascontiguousarray(value).tobytes())
        return InferResult(response)


def load_client():
    spec = importlib.util.spec_from_file_location("triton_client", ROOT / "tools" / "triton_client.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_client_example_equals_explainer(repository, models):
    client_module = load_client()
    folder = repository / "tiny_sglrp"
    server = StandInTriton(folder)
    photos = models["photos"]
    served, pixels, outputs = client_module.explain_photos(server, "tiny_sglrp", photos, targets=[-1, 3, 0])
    assert server.requests == 2  # 3 photos, max_batch_size 2
    reference = Explainer(folder / "1" / "model.onnx", "cpu").explain_images(photos, targets=[-1, 3, 0])
    np.testing.assert_array_equal(pixels, reference.images)
    np.testing.assert_array_equal(outputs[served.explained_output], reference.explained_class)
    np.testing.assert_allclose(outputs[served.logits_output], reference.logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outputs[served.relevance_output], reference.relevance, rtol=1e-5, atol=1e-7)
    assert reference.explained_class[1] == 3 and reference.explained_class[2] == 0
