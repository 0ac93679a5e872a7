"""results/: the run records behind the docs' tables hold together.

Every record (results/<table>/<run>/) is a finished run's flags.txt,
metrics.json and per_user.npz: the three must be present and agree (the
per-user means are the metrics.json test metrics of the same label and
step). Every docs table row that the "docs" object of
results/<table>/table.json ties to records
must print the numbers those records give: the selected steps, the
validation metric and the test metrics, mean ± sample sd x100 to two
decimals, as `maml-tf summarize` prints them.
"""

import glob
import json
import os

import numpy as np
import pytest

from maml_tf.evaluate import per_user as per_user_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")
RECORDS = sorted(os.path.dirname(p) for p in
                 glob.glob(os.path.join(RESULTS, "*", "*", "metrics.json")))
TABLE_FILES = sorted(glob.glob(os.path.join(RESULTS, "*", "table.json")))


def _rel(path):
  return os.path.relpath(path, ROOT)


def _metrics_json(record):
  with open(os.path.join(record, "metrics.json")) as f:
    return json.load(f)


def _seed(record):
  with open(os.path.join(record, "flags.txt")) as f:
    seeds = [line.split("=", 1)[1] for line in f.read().splitlines()
             if line.startswith("--seed=")]
  assert len(seeds) == 1, f"{_rel(record)}/flags.txt: one --seed line expected"
  return int(seeds[0])


def test_there_are_records():
  assert RECORDS and TABLE_FILES


@pytest.mark.parametrize("record", RECORDS, ids=_rel)
def test_record_is_finished_and_self_consistent(record):
  summary = _metrics_json(record)
  _seed(record)
  assert summary["finished"] is True
  results = summary["results"]
  assert results["best"]["selected_by"].startswith("validation")
  data = per_user_lib.read(os.path.join(record, per_user_lib.FILE))
  checked = 0
  for label, result in results.items():
    block = data[label]
    assert block["step"] == result["step"], label
    for metric, value in result["test"].items():
      if metric in block:
        assert len(block[metric]) == len(data["users"])
        np.testing.assert_allclose(block[metric].mean(), value, rtol=1e-5,
                                   err_msg=f"{_rel(record)} {label} {metric}")
        checked += 1
  assert checked >= 2 * len(results)


def _cell(values):
  values = 100.0 * np.asarray(values, np.float64)
  return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def _table_rows(page):
  """[(first cell, {header: cell})] of every Markdown table row of a page."""
  rows, header = [], None
  with open(os.path.join(ROOT, page), encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line.startswith("|"):
        header = None
        continue
      cells = [c.strip() for c in line.strip("|").split("|")]
      if header is None:
        header = cells
      elif not set(line) <= set("|-: "):
        rows.append((cells[0], dict(zip(header, cells))))
  return rows


def _docs_specs():
  """(the docs object, the table's folder) of every table.json with one."""
  for path in TABLE_FILES:
    with open(path) as f:
      spec = json.load(f).get("docs")
    if spec:
      yield spec, path


def _tied_rows():
  for spec, path in _docs_specs():
    for prefix, pattern in spec["rows"].items():
      yield pytest.param(spec, os.path.dirname(path), prefix, pattern,
                         id=f"{_rel(os.path.dirname(path))}:{prefix}")


@pytest.mark.parametrize("spec,table,prefix,pattern", list(_tied_rows()))
def test_docs_row_prints_what_its_records_give(spec, table, prefix, pattern):
  records = sorted(glob.glob(os.path.join(table, pattern)), key=_seed)
  assert len(records) >= 3, f"{pattern}: at least 3 seeds"
  rows = [row for first, row in _table_rows(spec["page"])
          if first.startswith(prefix) and spec["step_column"] in row]
  assert len(rows) == 1, f"{spec['page']}: one row starting {prefix!r}"
  row = rows[0]
  summaries = [_metrics_json(r)["results"] for r in records]
  steps = ", ".join(str(s["best"]["step"]) for s in summaries)
  assert row[spec["step_column"]] == steps
  select = spec["valid_metric"]
  assert row[spec["valid_column"]] == _cell([s["best"]["valid"][select]
                                             for s in summaries])
  for column, metric in spec["metrics"].items():
    printed = row[column].rstrip("*")
    assert printed == _cell([s[spec["which"]]["test"][metric]
                             for s in summaries]), column


def _preservation_rows():
  for spec, path in _docs_specs():
    block = spec.get("preservation", {})
    for prefix, pattern in block.get("rows", {}).items():
      yield pytest.param(spec, os.path.dirname(path), prefix, pattern,
                         id=f"{_rel(os.path.dirname(path))}:{prefix}:preservation")


@pytest.mark.parametrize("spec,table,prefix,pattern", list(_preservation_rows()))
def test_docs_preservation_row_prints_what_its_records_give(spec, table, prefix,
                                                            pattern):
  """RQ4's rows: each record's `best.preservation` (the measure at the
  selected round), mean ± sd over the seeds, three decimals."""
  columns = spec["preservation"]["columns"]
  records = sorted(glob.glob(os.path.join(table, pattern)), key=_seed)
  assert len(records) >= 3, f"{pattern}: at least 3 seeds"
  rows = [row for first, row in _table_rows(spec["page"])
          if first.startswith(prefix) and set(columns) <= set(row)]
  assert len(rows) == 1, f"{spec['page']}: one preservation row starting {prefix!r}"
  assert rows[0]["seeds"] == str(len(records))
  for column, (modality, items) in columns.items():
    values = np.asarray([_metrics_json(r)["best"]["preservation"]
                         [modality][items] for r in records])
    assert rows[0][column] == f"{values.mean():.3f} ± {values.std(ddof=1):.3f}", column


def _stars():
  for spec, path in _docs_specs():
    for prefix, star in spec.get("stars", {}).items():
      yield pytest.param(spec, os.path.dirname(path), prefix, star,
                         id=f"{_rel(os.path.dirname(path))}:{prefix}")


def _per_user_by_seed(table, pattern, which):
  out = {}
  for record in glob.glob(os.path.join(table, pattern)):
    data = per_user_lib.read(os.path.join(record, per_user_lib.FILE))
    out[_seed(record)] = (data["users"], data[which])
  return out


@pytest.mark.parametrize("spec,table,prefix,star", list(_stars()))
def test_docs_stars_are_the_per_user_t_tests(spec, table, prefix, star):
  """A metric of the row carries a star exactly when the row's runs beat
  the compared runs with paired two-tailed t-test p < 0.05 over the test
  users in every seed (scipy's ttest_rel, seed by seed)."""
  from scipy import stats
  a = _per_user_by_seed(table, star["a"], spec["which"])
  b = _per_user_by_seed(table, star["b"], spec["which"])
  assert len(a) >= 3 and sorted(a) == sorted(b)
  rows = [r for first, r in _table_rows(spec["page"])
          if first.startswith(prefix) and spec["step_column"] in r]
  assert len(rows) == 1, f"{spec['page']}: one row starting {prefix!r}"
  row = rows[0]
  for column, metric in spec["metrics"].items():
    significant = True
    for seed in a:
      users_a, values_a = a[seed]
      users_b, values_b = b[seed]
      np.testing.assert_array_equal(users_a, users_b)
      x, y = values_a[metric], values_b[metric]
      p = stats.ttest_rel(x, y).pvalue
      significant &= bool(x.mean() > y.mean() and p < 0.05)
    assert row[column].endswith("*") == significant, column
