"""Serving augmented models from inference servers (Triton Inference Server: :mod:`.triton`)."""

from sglrp_onnx.serving.triton import TensorConfig, TritonConfig, triton_config, write_model_repository

__all__ = ["TensorConfig", "TritonConfig", "triton_config", "write_model_repository"]
