"""CUDA for the engine: whether this host can run ONNX Runtime's CUDA provider (and why not), and CUDA graphs of the
fp16 model. No torch: the Bento carries this module."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertpack.machine import library_versions

log = logging.getLogger("bertpack.engine")


def bucket_length(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `n` (or `n` itself past the largest)."""
    for b in buckets:
        if n <= b:
            return b
    return n


def gpu_present() -> bool:
    """An NVIDIA device is visible (the driver's device nodes exist)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def uses_cuda(device: str) -> bool:
    """Whether a device setting (auto, cpu, cuda) runs on the CUDA provider: the engine, the service and doctor
    agree."""
    return device == "cuda" or (device == "auto" and cuda_available())


def cuda_available() -> bool:
    """CUDA can be asked for: onnxruntime-gpu lists its CUDA provider even where no GPU exists, and
    asking for it there logs errors, so require a visible device as well."""
    import onnxruntime as ort

    return gpu_present() and "CUDAExecutionProvider" in ort.get_available_providers()


def onnxruntime_packages() -> dict[str, str]:
    """Installed ONNX Runtime distributions; `onnxruntime` beside `onnxruntime-gpu` shadows the GPU build."""
    found = library_versions(("onnxruntime", "onnxruntime-gpu"))
    found.pop("python")
    return found


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here (None when it can be asked for)."""
    import onnxruntime as ort

    if not gpu_present():
        return "no NVIDIA device is visible (/dev/nvidia*)"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        # the imported build has CUDA (an `onnxruntime` distribution beside it, if any, is not the one imported)
        return None
    packages = onnxruntime_packages()
    if "onnxruntime" in packages and "onnxruntime-gpu" in packages:
        return (
            "both `onnxruntime` and `onnxruntime-gpu` are installed and the CPU build shadows the GPU one: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        )
    return (
        f"this ONNX Runtime build ({', '.join(f'{k} {v}' for k, v in packages.items()) or ort.__version__}) has no "
        "CUDA provider; install onnxruntime-gpu"
    )


def preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the nvidia-* wheels or torch when present (ORT >= 1.21); harmless when absent."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - best effort: the session creation below reports the real failure
            log.debug("onnxruntime.preload_dlls failed: %s", exc)


@dataclass
class _GraphSlot:
    binding: object
    inputs: dict  # name -> OrtValue on the device, bound once
    run_options: object
    on_device: dict = field(default_factory=dict)  # name -> the host array last copied into that OrtValue


class CudaGraphs:
    """CUDA graphs for the fp16 model, one per (batch bucket, length bucket), captured on first use.

    ORT replays a captured graph only when every input and output stays at the same device address
    and shape, so each shape gets preallocated device tensors bound once and refreshed in place, and
    its own `gpu_graph_id`. `session` is a CUDA session of the model opened with enable_cuda_graph. The capture needs
    a GPU (tests/test_serving_light.py runs this bookkeeping on
    CPU tensors without one); any failure disables the graphs and the engine goes on with plain IO binding
    (see OnnxClassifier.run).
    """

    BATCHES = (1, 2, 4, 8, 16, 32, 64)
    MAX_GRAPHS = 48

    def __init__(
        self, session, input_names: list[str], output_name: str, n_labels: int, pad_id: int, device: str = "cuda"
    ):
        self.session, self.input_names, self.output_name = session, input_names, output_name
        self.n_labels, self.pad_id = n_labels, pad_id
        self.device = device  # where the bound tensors live; "cpu" only to test this bookkeeping without a GPU
        self.slots: dict[tuple[int, int], _GraphSlot] = {}

    def _slot(self, rows: int, length: int) -> _GraphSlot:
        import onnxruntime as ort

        key = (rows, length)
        if key not in self.slots:
            binding = self.session.io_binding()
            inputs = {
                name: ort.OrtValue.ortvalue_from_shape_and_type((rows, length), np.int64, self.device, 0)
                for name in self.input_names
            }
            for name, value in inputs.items():
                binding.bind_ortvalue_input(name, value)
            output = ort.OrtValue.ortvalue_from_shape_and_type((rows, self.n_labels), np.float32, self.device, 0)
            binding.bind_ortvalue_output(self.output_name, output)
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(len(self.slots)))
            self.slots[key] = _GraphSlot(binding, inputs, run_options)
        return self.slots[key]

    def fits(self, n: int, length: int) -> bool:
        """A graph exists or may still be captured for this batch shape."""
        rows = bucket_length(n, self.BATCHES)
        return rows <= self.BATCHES[-1] and ((rows, length) in self.slots or len(self.slots) < self.MAX_GRAPHS)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits for one batch: copy it in, replay its shape's graph, copy the logits out."""
        slot, n = self.stage(inputs)
        self.replay(slot)
        return self.fetch(slot, n)

    def stage(self, inputs: dict[str, np.ndarray]) -> tuple[_GraphSlot, int]:
        """Copy a batch into its shape's bound device tensors (rows padded to a graph batch size);
        returns the slot to replay and the batch's real row count."""
        n, length = inputs["input_ids"].shape
        if not self.fits(n, length):
            raise RuntimeError(
                f"no CUDA graph for a batch of {n} x {length} tokens (largest graph batch {self.BATCHES[-1]}, "
                f"at most {self.MAX_GRAPHS} shapes)"
            )
        rows = bucket_length(n, self.BATCHES)
        slot = self._slot(rows, length)
        for name in self.input_names:
            padded = np.full((rows, length), self.pad_id if name == "input_ids" else 0, dtype=np.int64)
            padded[:n] = inputs[name]
            if name == "attention_mask":
                padded[n:, 0] = 1  # filler rows attend to one token so they stay finite; their output is dropped
            # Each copy is a synchronous host-to-device transfer on the request's path; token_type_ids (all
            # zeros for single sentences) and a repeated mask are already on the device.
            if not np.array_equal(slot.on_device.get(name), padded):
                slot.inputs[name].update_inplace(padded)
                slot.on_device[name] = padded
        return slot, n

    def replay(self, slot: _GraphSlot) -> None:
        """Run the model on what the slot holds (the first runs of a shape capture its graph)."""
        self.session.run_with_iobinding(slot.binding, slot.run_options)

    @staticmethod
    def fetch(slot: _GraphSlot, n: int) -> np.ndarray:
        """The first n rows of the slot's logits, copied to the host."""
        return slot.binding.copy_outputs_to_cpu()[0][:n].astype(np.float32)
