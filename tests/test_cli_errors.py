"""Bad input through the real CLI: exit code 2, one clear line, nothing written.

Each case starts from a valid tiny dataset in the release's layout, breaks one
thing, runs what scripts/train.py runs (in this process: the same parsing and
exit statuses as its command line; tests/test_cli.py runs the real process)
and checks the message names the file (or the
flag), the rule and the value.
"""

import os

import numpy as np
import pytest

from tests.helpers import run_in_process, write_release_layout


def _rewrite(path, old, new):
  with open(path) as f:
    text = f.read()
  assert old in text
  with open(path, "w") as f:
    f.write(text.replace(old, new, 1))


def _break_header(d):
  _rewrite(d / "train.csv", "itemID,userID", "itemId,userID")


def _bad_id(value):
  def breaker(d):
    lines = (d / "train.csv").read_text().splitlines()
    first = lines[1].split(",")
    first[0] = value
    lines[1] = ",".join(first)
    (d / "train.csv").write_text("\n".join(lines) + "\n")
  return breaker


def _user_knows_every_item(d):
  """User 0 gets every train item: no negative can be drawn for them."""
  lines = (d / "train.csv").read_text().splitlines()
  test = (d / "test.csv").read_text().splitlines()
  asins = {}
  for line in lines[1:] + test[1:]:
    item, _, _, asin = line.split(",")
    asins[int(item)] = asin
  top = max(int(line.split(",")[0]) for line in lines[1:])
  extra = [f"{i},0,R0,{asins[i]}" for i in range(top + 1)]
  (d / "train.csv").write_text("\n".join(lines + extra) + "\n")


def _features(array):
  def breaker(d):
    np.save(d / "meta.npy", array)
  return breaker


def _nan_features(d):
  x = np.load(d / "meta.npy")
  x[3, 2] = np.nan
  np.save(d / "meta.npy", x)


def _corrupt_npy(d):
  (d / "meta.npy").write_bytes(b"\x93NUMPY garbage")


def _dict_missing_asins(d):
  vectors = {f"A{i:04d}": np.ones(4, np.float32) for i in range(5)}
  with open(d / "meta.npy", "wb") as f:
    np.save(f, np.array(vectors, dtype=object), allow_pickle=True)


def _empty_train(d):
  (d / "train.csv").write_text("itemID,userID,reviewerID,asin\n")


def _valid_csv(d):
  (d / "valid.csv").write_text((d / "test.csv").read_text())


def _only_recbole_inter(d):
  """One RecBole .inter of every pair: no test split."""
  rows = ["user_id:token\titem_id:token"]
  for name in ("train.csv", "test.csv"):
    for line in (d / name).read_text().splitlines()[1:]:
      item, user, _, _ = line.split(",")
      rows.append(f"u{user}\ti{item}")
    os.remove(d / name)
  (d / "data.inter").write_text("\n".join(rows) + "\n")


def _also_npz(d):
  (d / "train.npz").write_bytes(b"PK")


def _remove(name):
  def breaker(d):
    os.remove(d / name)
  return breaker


CASES = [
    # (id, breaker, extra flags, fragments the one-line message must contain)
    ("missing train.csv", _remove("train.csv"), [], ["train.csv"]),
    ("misnamed column", _break_header, [], ["train.csv", "itemID"]),
    ("non-integer id", _bad_id("abc"), [], ["train.csv", "line 2", "itemID", "'abc'"]),
    ("negative id", _bad_id("-3"), [], ["train.csv", "line 2", "itemID", "-3"]),
    ("huge id", _bad_id("99999999999"), [], ["train.csv", "line 2", "99999999999"]),
    ("empty train", _empty_train, [], ["train"]),
    ("feature rows", _features(np.zeros((7, 5), np.float32)), [], ["meta.npy", "7"]),
    ("feature NaN", _nan_features, [], ["meta.npy", "row 3", "column 2", "Received: nan"]),
    ("feature dtype", _features(np.array([["a"] * 5] * 30)), [], ["meta.npy"]),
    ("feature 1-D", _features(np.zeros(30, np.float32)), [], ["meta.npy"]),
    ("corrupt npy", _corrupt_npy, [], ["meta.npy"]),
    ("dict missing asins", _dict_missing_asins, [], ["meta.npy", "asin"]),
    ("user knows every item", _user_knows_every_item, [],
     ["train", "user 0", "every item", "no negative"]),
    ("unknown modality", lambda d: None, ["--modalities=meta,image"], ["image"]),
    ("valid.csv and validation_fraction", _valid_csv,
     ["--validation_fraction=0.1"],
     ["`--validation_fraction` must be 0", "validation split", "0.1"]),
    ("min_rating without ratings", lambda d: None, ["--min_rating=4"],
     ["`--min_rating` needs a rating column", "train.csv has none"]),
    ("negative kcore", lambda d: None, ["--kcore=-1"],
     ["`--kcore` must be >= 0. Received: -1"]),
    ("no test split under release", _only_recbole_inter,
     ["--modalities=", "--data_format=recbole"],
     ["`--protocol=release` needs test pairs", "--protocol=split"]),
    ("ambiguous format", _also_npz, [],
     ["ambiguous", "release (train.csv)", "npz (train.npz)"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_data_exits_2_with_one_clear_line(tmp_path, case):
  _, breaker, extra, fragments = case
  data = tmp_path / "data"
  write_release_layout(str(data))
  breaker(data)
  workdir = tmp_path / "w"
  proc = run_in_process(["--dataset=custom", f"--data_dir={data}",
              f"--extra_features=meta={data / 'meta.npy'}", "--batch_size=8",
              "--train_steps=2", "--eva_batches=2", "--noexport",
              "--notensorboard", f"--workdir={workdir}",
              f"--cache_dir={tmp_path / 'cache'}"] + extra)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, proc.stderr[-2000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  assert not (workdir / "metrics.jsonl").exists()
