"""Serving: the SavedModel (`saved_model.py`), its signatures' graphs
(`signatures.py`), the TFRS retrieval index (`retrieval.py`, the one module
that imports TFRS), and latency and quality measures of an export
(`measures.py`)."""

from maml_tf import lazy

__getattr__, __dir__, __all__ = lazy.attach(__name__, {
    "export_saved_model": "saved_model",
    "export_from_run": "saved_model",
    "versions": "saved_model",
    "ServingGraphs": "signatures",
    "load_info": "measures",
    "latency": "measures",
    "ranking_quality": "measures",
})
