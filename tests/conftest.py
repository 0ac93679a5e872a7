"""Suite-wide guard: tests write only to their temporary folders.

A run that forgets `--noexport` or an `export_dir` would export into the
repository's own saved_models/ (and a forgotten workdir into runs/); this
fails the session if either changed.
"""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATCHED = ("saved_models", "runs")


def _listing():
  out = {}
  for name in WATCHED:
    base = os.path.join(ROOT, name)
    out[name] = sorted(
        os.path.relpath(os.path.join(d, f), base)
        for d, _, files in os.walk(base) for f in files)
  return out


@pytest.fixture(scope="session", autouse=True)
def repository_stays_clean():
  before = _listing()
  yield
  after = _listing()
  for name in WATCHED:
    added = sorted(set(after[name]) - set(before[name]))
    assert not added, f"tests wrote into the repository's {name}/: {added[:5]}"


# The files that take longest (measured: `--durations`), run first. Under
# pytest-xdist (`-n auto --dist=loadfile --no-loadscope-reorder`, pyproject)
# each file goes whole to the next free worker in this order, so a long file
# never starts last while the other worker sits idle. Other files keep their
# collection order; no test depends on another file's.
SLOW_FIRST = ("test_python_api.py", "test_distribute.py", "test_export.py",
              "test_mario.py", "test_tune.py", "test_checkpoint.py",
              "test_cli.py", "test_split.py", "test_preservation_runs.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))

