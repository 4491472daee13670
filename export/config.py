"""Options of `bertpack export`, as one dataclass shared by the CLI and `export_artifact`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from export.parity import Tolerance

INT8_CHOICES = ("auto", "dynamic", "static", "none")


@dataclass
class ExportConfig:
    run_dir: Path
    out: Path
    # CoLA folder, a data set, "glue" or "glue/TASK" (the hub); None = the data the run was trained on for a model that
    # is not CoLA's, else bertpack.data.default_data_dir()
    data: str | Path | None = None
    name: str | None = None  # the model store's name; None = export.store.default_name (bertpack-cola for CoLA)
    store: bool = True  # register in the BentoML model store
    overwrite: bool = False
    tolerance: Tolerance = field(default_factory=Tolerance)
    int8: str = "auto"  # auto = both methods, the serving default picked from the figures; none = no int8 (GPU-only)
    quant_target: str = "auto"  # auto = from this CPU's flags; or avx2 / avx512 / avx512_vnni / arm64
    calibration_samples: int = 256
    flip_check: bool = True
    # Without it, an int8 that meets no tolerance is left out (CPU default: optimized) and the export succeeds.
    require_int8: bool = False
    limit: int | None = None  # score N validation sentences spread over the split (quick runs; the default scores all)
    seed: int = 0
