"""The README's "From Python" example, run exactly as written.

The code between the README's `from-python` markers is executed in a
temporary folder (its relative paths land there), so a README that drifts
from the API fails here.
"""

import os
import re

import numpy as np
import pytest

import maml_tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_example():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  match = re.search(r"<!-- from-python:start -->\s*```python\n(.*?)```\s*"
                    r"<!-- from-python:end -->", text, re.S)
  assert match, "README.md lost its from-python example"
  return match.group(1)


def test_top_level_api_names():
  for name in ("MAML", "CML", "LRML", "Config", "load_dataset",
               "train_and_evaluate", "PairSampler", "Evaluator",
               "RankingMetrics", "export_saved_model"):
    assert name in maml_tf.__all__
    assert getattr(maml_tf, name) is not None
  with pytest.raises(AttributeError, match="no attribute 'Nope'"):
    getattr(maml_tf, "Nope")


def test_readme_from_python_example_runs(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("MAML_TF_CACHE", str(tmp_path / "cache"))
  code = _readme_example()
  scope = {"__name__": "readme_example"}
  exec(compile(code, "README.md:from-python", "exec"), scope)  # pylint: disable=exec-used
  out = capsys.readouterr().out
  # The test metrics it printed are real fractions of the Office test users.
  metrics = re.search(r"\{'ndcg@10': ([0-9.e-]+), 'recall@10': ([0-9.e-]+)", out)
  assert metrics, out[-2000:]
  ndcg = float(metrics.group(1))
  # Measured on this split (seed 0): 0.0030 untrained, 0.0115 after the two epochs.
  assert 0.005 < ndcg < 0.2, ndcg
  model = scope["model"]
  assert model.optimizer.iterations.numpy() in (100, 200)
  # Stock callbacks wrote real files; BackupAndRestore removed its backup
  # at the end of a finished fit, as Keras documents.
  events = [f for _, _, fs in os.walk(tmp_path / "runs/python/tensorboard") for f in fs]
  assert any(f.startswith("events.out.tfevents") for f in events)
  assert not os.path.exists(tmp_path / "runs/python/backup/latest.weights.h5")
  assert (tmp_path / "runs/python/maml.keras").stat().st_size > 0
  export = tmp_path / "runs/python/saved_models/maml_office/1"
  assert (export / "saved_model.pb").exists()
  # The loaded copy is the same model: its config and every weight.
  again = scope["again"]
  assert type(again) is type(model) and again.get_config() == model.get_config()
  for a, b in zip(again.get_weights(), model.get_weights()):
    np.testing.assert_array_equal(a, b)
