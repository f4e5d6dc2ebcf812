"""``sglrp-onnx inspect``: show what the engine sees in a model: nodes, first layers, rules."""

from __future__ import annotations

import argparse
import json

from .convert import add_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="list the explained path: node names (for rule overrides), op types, shapes, assigned rules and "
        "every node that blocks conversion",
        description="Canonicalise a model as 'convert' would and print each node on the path from the image "
        "to the logits with its stable name, op type, shapes and the rule it gets, then every node that "
        "blocks conversion with its reason (exit code 5 if there is one). For a converted model, also print how "
        "it was made and what ONNX Runtime's CUDA provider and TensorRT will make of it (nodes left to the CPU, "
        "nodes TensorRT refuses; checked against their published rules, without a GPU).",
    )
    parser.add_argument("model", metavar="MODEL.onnx")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_options(parser)
    parser.set_defaults(run=run)


def describe(path: str, composite: str = "dtd", rules=None, image_input=None, epsilon=1e-6, stabilizer=1e-6, gamma=None) -> dict:
    from sglrp_onnx import metadata
    from sglrp_onnx.composites import assign_rules, default_gamma, first_layers
    from sglrp_onnx.convert import _precheck, canonical_graph, load_rule_file, strip_relevance
    from sglrp_onnx.emit.relevance import BACKWARD, blocking_nodes
    from sglrp_onnx.io import load_model

    model = load_model(path)
    made = {k.split(".", 1)[1]: v for k, v in metadata.read(model).items()}
    runtimes = runtime_report(model) if made else {}
    if made:
        model = strip_relevance(model)
    _precheck(model)
    graph = canonical_graph(model, image_input)
    if isinstance(rules, str):
        rules = load_rule_file(rules)
    if gamma is None:
        gamma = default_gamma(composite)
    assigned = assign_rules(graph, composite, {"epsilon": epsilon, "stabilizer": stabilizer, "gamma": gamma}, rules)
    firsts = first_layers(graph)
    reasons: dict[str, str] = {}
    for node, reason in blocking_nodes(graph, assigned):
        reasons.setdefault(node.name, reason)
    nodes = []
    for node in graph.nodes:
        rule = assigned.get(node.name)
        nodes.append({
            "name": node.name,
            "op": node.source_op or node.op_type,
            "inputs": [f"{t}{graph.shape_str(t)}" for t in node.inputs if t and not graph.is_const(t)],
            "outputs": [f"{t}{graph.shape_str(t)}" for t in node.outputs if t],
            "first_layer": node.name in firsts,
            "rule": "BLOCKED" if node.name in reasons else (
                rule.name if rule is not None else ("structural" if node.op_type in BACKWARD else "UNSUPPORTED")),
        })
    blocking = [{"name": name, "reason": reason} for name, reason in reasons.items()]
    return {"image_input": graph.image, "image_shape": graph.shape_str(graph.image), "logits": graph.logits,
            "logits_shape": graph.shape_str(graph.logits), "converted_with": made, "runtimes": runtimes,
            "nodes": nodes, "blocking": blocking}


def runtime_report(model) -> dict:
    """What the runtimes will make of a converted model (SPEC section 8; :mod:`sglrp_onnx.runtime_rules`):
    float nodes of the relevance part ONNX Runtime's CUDA provider would leave to the CPU, nodes
    TensorRT refuses (whole model), and why onnxruntime-gpu would not load it."""
    from sglrp_onnx.emit.builder import PREFIX
    from sglrp_onnx.runtime_rules import cuda_fallbacks, release_blockers, tensorrt_blockers

    return {
        "cuda_cpu_fallbacks": [str(f) for f in cuda_fallbacks(model, prefix=PREFIX)],
        "tensorrt_blockers": [str(f) for f in tensorrt_blockers(model)],
        "onnxruntime_gpu_1.31": release_blockers(model) or "loads",
    }


def _print_runtimes(runtimes: dict) -> None:
    cuda, trt = runtimes["cuda_cpu_fallbacks"], runtimes["tensorrt_blockers"]
    print(f"CUDA provider: {'every float node of the relevance part has a GPU kernel' if not cuda else f'{len(cuda)} float node(s) would run on the CPU'}")
    for line in cuda:
        print(f"  {line}")
    print(f"TensorRT: {'nothing onnx-tensorrt 10 refuses' if not trt else f'{len(trt)} node(s) refused'}")
    for line in trt[:20]:
        print(f"  {line}")
    if len(trt) > 20:
        print(f"  ... and {len(trt) - 20} more (--json lists all)")
    release = runtimes["onnxruntime_gpu_1.31"]
    print(f"onnxruntime-gpu 1.31: {release if isinstance(release, str) else '; '.join(release)}")


def run(args: argparse.Namespace) -> int:
    from sglrp_onnx.errors import UnsupportedModelError

    info = describe(args.model, args.composite, args.rules, args.image_input, args.epsilon, args.stabilizer, args.gamma)
    # every node is printed; blocking nodes make the exit code that of an unsupported model
    status = UnsupportedModelError.exit_code if info["blocking"] else 0
    if args.json:
        print(json.dumps(info, indent=2))
        return status
    print(f"image input: {info['image_input']} {info['image_shape']}    logits: {info['logits']} {info['logits_shape']}")
    if info["converted_with"]:
        made = info["converted_with"]
        print(f"converted by sglrp-onnx {made.get('version')}: method {made.get('method')}, contrast {made.get('contrast')}, "
              f"composite {made.get('composite')}, target runtime {made.get('target_runtime', 'onnxruntime')}")
        _print_runtimes(info["runtimes"])
    print(f"{'node':40} {'op':20} {'rule':11} shapes")
    for node in info["nodes"]:
        mark = " (first layer)" if node["first_layer"] else ""
        print(f"{node['name']:40} {node['op']:20} {node['rule']:11} {', '.join(node['inputs'])} -> {', '.join(node['outputs'])}{mark}")
    if info["blocking"]:
        print(f"\n{len(info['blocking'])} blocking node(s); the model cannot be converted until each is resolved:")
        for entry in info["blocking"]:
            print(f"  {entry['name']}: {entry['reason']}")
    return status
