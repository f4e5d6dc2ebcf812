"""IO binding with buffers that stay put: inputs and outputs of one input shape live in
``OrtValue`` buffers on the session's device, allocated once and refilled for every batch of that
shape (``OrtValue.update_inplace``).

This saves ONNX Runtime an allocation and, on CUDA, lets a captured CUDA graph be replayed: a graph
reads and writes fixed addresses, so its inputs and outputs must be the same buffers every run
(ONNX Runtime's "CUDA graphs" notes in the CUDA Execution Provider documentation). Output buffers
are those ONNX Runtime allocated on the first run of a shape, bound again for the next runs.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class BoundBuffers:
    """Device buffers per input shape for one session (the few most recent shapes are kept).

    Args:
        session: an ``onnxruntime.InferenceSession``.
        device: ``"cuda"`` or ``"cpu"``.
        device_id: the GPU.
        keep: how many input shapes keep their buffers (a full batch and the last, smaller one).
    """

    def __init__(self, session, device: str = "cpu", device_id: int = 0, keep: int = 2):
        self.session = session
        self.device = device
        self.device_id = device_id
        self.keep = keep
        self._by_shape: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_shape)

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Run the session on ``feeds`` (copied into the bound inputs); outputs as host arrays (copies)."""
        import onnxruntime as ort

        key = tuple((name, value.shape, value.dtype.str) for name, value in feeds.items())
        entry = self._by_shape.get(key)
        if entry is None:
            entry = self._new_entry(ort, feeds, output_names)
        else:
            self._by_shape.move_to_end(key)
        binding, inputs, outputs = entry
        for name, value in feeds.items():
            inputs[name].update_inplace(np.ascontiguousarray(value))
        self.session.run_with_iobinding(binding)
        if outputs is None:  # first run of this shape: keep ONNX Runtime's output buffers
            values = binding.get_outputs()
            outputs = dict(zip(output_names, values))
            for name, value in outputs.items():
                binding.bind_ortvalue_output(name, value)
            self._by_shape[key] = (binding, inputs, outputs)
            self._trim()
        # .numpy() of a CPU buffer is a view of it: copy, since the next run overwrites it
        return {name: np.array(outputs[name].numpy(), copy=True) for name in output_names}

    def _new_entry(self, ort, feeds, output_names):
        binding = self.session.io_binding()
        inputs = {}
        for name, value in feeds.items():
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(list(value.shape), value.dtype, self.device, self.device_id)
            binding.bind_ortvalue_input(name, buffer)
            inputs[name] = buffer
        for name in output_names:
            binding.bind_output(name, self.device, self.device_id)
        return binding, inputs, None

    def _trim(self) -> None:
        while len(self._by_shape) > self.keep:
            self._by_shape.popitem(last=False)

    def buffer_addresses(self) -> dict:
        """``{input shape key: {tensor name: device address}}`` (for checks that buffers are reused)."""
        return {
            key: {name: value.data_ptr() for name, value in {**inputs, **(outputs or {})}.items()}
            for key, (binding, inputs, outputs) in self._by_shape.items()
        }
