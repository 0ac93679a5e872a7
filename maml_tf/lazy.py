"""Lazy attributes for a package `__init__`: `from maml_tf.train import
train_and_evaluate` imports TensorFlow only when that name is first used."""

from __future__ import annotations

import importlib


def attach(package: str, names: dict):
  """(`__getattr__`, `__dir__`, `__all__`) for a package whose public names
  live in its submodules: names {public name: "module" (relative)}."""

  def __getattr__(name):
    if name in names:
      module = importlib.import_module(f"{package}.{names[name]}")
      return getattr(module, name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")

  def __dir__():
    return sorted(names)

  return __getattr__, __dir__, sorted(names)
