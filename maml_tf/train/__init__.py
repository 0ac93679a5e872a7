"""Training: a run as named steps (`run.py`), its inputs, its workdir
(`workdir.py`), checkpoints, callbacks, the optimizer, the tf.distribute
strategy, the refit and the final report."""

from maml_tf import lazy

__getattr__, __dir__, __all__ = lazy.attach(__name__, {
    "train_and_evaluate": "run",
    "build_model": "build",
    "build_evaluators": "build",
    "load_data": "inputs",
    "prepare_data": "inputs",
    "preservation_dataset": "inputs",
    "RESUMABLE_CHANGES": "workdir",
    "read_flagfile": "workdir",
    "changed_flags": "workdir",
    "clear_workdir": "workdir",
    "lock_workdir": "workdir",
    "prepare_workdir": "workdir",
})
