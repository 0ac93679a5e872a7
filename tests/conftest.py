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
