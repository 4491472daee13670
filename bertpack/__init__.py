"""bertpack: fine-tune BERT on CoLA, export to ONNX, serve with BentoML, benchmark.

This package holds the shared pieces (errors, CoLA loading, metrics, file layout, CLI).
It must stay light at import time: the serving code imports `bertpack.errors`,
`bertpack.files` and `bertpack.machine`, and the Bento must not pull torch or transformers.
"""

__version__ = "0.1.0"
