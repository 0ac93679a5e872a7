"""Data folders in other projects' formats -> the same `Dataset`.

One file per format, each listed once in `FORMATS` below:

* `release`: train.csv, test.csv, optional valid.csv (`release.py`).
* `recbole`: RecBole atomic files, `<name>.inter` (+ `<name>.item`).
* `mmrec`: MMRec's `<name>.inter` with `x_label`, `image_feat.npy`,
  `text_feat.npy`.
* `npz`: `train.npz`, `test.npz`, optional `valid.npz` (scipy sparse).
* `auto` (`--data_format`): the one format the folder's files point to; none
  or several is a one-line error naming what was found.

The built-in Amazon Office data (`--dataset=office`) is `office.py`.

A format's module defines `detect(data_dir, names) -> [file names]` (the
files of the folder listing `names` that are its own), a reader
`load_x(data_dir, *, feature_paths, modalities, min_rating, kcore) ->
Dataset` and `TIMES`, where its files keep interaction times (None: the
format has none); see docs/adding_a_format.md.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Dict, List, Mapping, Optional, Sequence

from maml_tf.data.dataset import Dataset
from maml_tf.data.formats import common
from maml_tf.data.formats.office import load_office
from maml_tf.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Format:
  """A format's file in this folder, its reader, its detection rank."""
  module: str  # maml_tf.data.formats.<module>
  reader: str  # its function: (data_dir, *, feature_paths, modalities,
  #              min_rating, kcore) -> Dataset
  rank: int  # when several match a folder: lower listed first, then by the
  #           first file's place in the listing


# The registry: `--data_format` choices in this order, after "auto".
FORMATS: Mapping[str, Format] = {
    "release": Format("release", "load_release_layout", rank=0),
    "recbole": Format("recbole", "load_recbole", rank=2),
    "mmrec": Format("mmrec", "load_mmrec", rank=2),
    "npz": Format("npz", "load_npz", rank=1),
}
DATA_FORMATS = ("auto",) + tuple(FORMATS)
DATASETS = ("office", "custom")


def _module(name: str):
  return importlib.import_module(f"{__name__}.{FORMATS[name].module}")


def detect_format(data_dir: str) -> str:
  """The format the files of `data_dir` point to.

  Raises:
    UsageError: none, or more than one (the message lists what was found).
  """
  data_dir = common.check_dir(data_dir)
  names = sorted(os.listdir(data_dir))
  found: Dict[str, List[str]] = {}
  for fmt in FORMATS:
    files = _module(fmt).detect(data_dir, names)
    if files:
      found[fmt] = files
  found = dict(sorted(found.items(), key=lambda kv: (
      FORMATS[kv[0]].rank, names.index(kv[1][0]))))
  if len(found) == 1:
    return next(iter(found))
  shown = "; ".join(f"{k} ({', '.join(v)})" for k, v in found.items())
  if not found:
    listing = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise UsageError(
        f"`--data_format=auto` found no known data files in {data_dir} "
        f"(release: train.csv + test.csv; recbole: <name>.inter with typed "
        f"header; mmrec: <name>.inter with x_label; npz: train.npz + "
        f"test.npz); it has: {listing or 'nothing'}. Received: auto")
  raise UsageError(
      f"`--data_format=auto` is ambiguous in {data_dir}: found {shown}; pass "
      f"--data_format={'|'.join(found)}. Received: auto")


def resolve_format(data_dir: str, data_format: str) -> str:
  if data_format not in DATA_FORMATS:
    raise UsageError(f"`--data_format` must be one of "
                     f"{', '.join(DATA_FORMATS)}. Received: {data_format!r}")
  if data_format == "auto":
    return detect_format(data_dir)
  return data_format


def load_format(data_format: str, data_dir: str, *,
                feature_paths: Mapping[str, str] = None,
                modalities: Optional[Sequence[str]] = None,
                min_rating: Optional[float] = None,
                kcore: int = 0) -> Dataset:
  """Loads the folder `data_dir` in the registered format `data_format`."""
  if data_format not in FORMATS:
    raise UsageError(f"`--data_format` must be one of "
                     f"{', '.join(DATA_FORMATS)}. Received: {data_format!r}")
  reader = getattr(_module(data_format), FORMATS[data_format].reader)
  return reader(data_dir, feature_paths=feature_paths or {},
                modalities=modalities, min_rating=min_rating, kcore=kcore)


def times_source(data_format: str) -> Optional[str]:
  """Where format `data_format`'s files keep interaction times (its module's
  `TIMES`, e.g. "a `timestamp:float` column in <name>.inter"); None when the
  format has no times."""
  if data_format not in FORMATS:
    raise UsageError(f"`--data_format` must be one of "
                     f"{', '.join(DATA_FORMATS)}. Received: {data_format!r}")
  return getattr(_module(data_format), "TIMES", None)


def load_dataset(dataset: str,
                 data_dir: Optional[str] = None,
                 modalities: Optional[Sequence[str]] = None,
                 feature_paths: Optional[Mapping[str, str]] = None,
                 text_dim: int = 512,
                 seed: int = 0,
                 cache_dir: Optional[str] = None,
                 *,
                 data_format: str = "auto",
                 min_rating: Optional[float] = None,
                 kcore: int = 0) -> Dataset:
  """"office" -> `load_office`, "custom" -> the folder `data_dir` in
  `data_format` ("auto" detects it): the one entry point for every dataset.

  `text_dim`, `seed` and `cache_dir` only matter for Office's built-in text.

  Raises:
    UsageError: unknown dataset, or data_dir missing for "custom" / given
      for "office", or a format that cannot be detected.
  """
  feature_paths = feature_paths or {}
  if dataset == "office":
    if data_dir:
      raise UsageError(f"`data_dir` is only for dataset 'custom'; Office is "
                       f"built in. Received: data_dir={data_dir!r}")
    if data_format not in ("auto", "release"):
      raise UsageError(f"`data_format` must be auto or release with dataset "
                       f"'office' (built in, the release's layout). Received: "
                       f"{data_format!r}")
    return load_office(modalities=modalities, feature_paths=feature_paths,
                       text_dim=text_dim, seed=seed, cache_dir=cache_dir,
                       min_rating=min_rating, kcore=kcore)
  if dataset == "custom":
    if not data_dir:
      raise UsageError("dataset 'custom' needs `data_dir`, a folder with "
                       "train.csv and test.csv")
    fmt = resolve_format(data_dir, data_format)
    return load_format(fmt, data_dir, feature_paths=feature_paths,
                       modalities=modalities, min_rating=min_rating,
                       kcore=kcore)
  raise UsageError(f"`dataset` must be one of "
                   f"{', '.join(map(repr, DATASETS))}. Received: {dataset!r}")


__all__ = ["DATASETS", "DATA_FORMATS", "FORMATS", "Format", "detect_format",
           "load_dataset", "load_format", "resolve_format", "times_source"]
