"""Hyper-parameter search on validation with keras-tuner: the search space
(`space.py`: each model's SEARCH_SPACE, narrowed by --search_space), the
trials' records (`trials.py`) and the search loop (`loop.py`)."""

from maml_tf import lazy

__getattr__, __dir__, __all__ = lazy.attach(__name__, {
    "TuneSettings": "loop",
    "search": "loop",
    "search_space": "space",
    "build_space": "space",
    "to_hyperparameters": "space",
    "apply_values": "space",
    "results_table": "trials",
})
