"""Tests for maml_tf.data.features: meta one-hot, Doc2Vec, modality file loaders."""

import csv
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from maml_tf.data import features
from maml_tf.errors import DataError, UsageError

TEXTS = [
    "Red stapler, heavy duty 20 sheets",
    "Blue ballpoint pens (12-pack)",
    "Red pens, fine tip",
    "Heavy duty paper trimmer 12 inch",
    "Sticky notes yellow 3x3",
]
ASINS = ["A0", "A1", "A2", "A3", "A4"]
DIM = 8
EPOCHS = 5


# ---------------------------------------------------------------------------
# meta


def test_meta_features_hand_checked():
  # 3 items: categories 0, 2, 1 (3 columns); brands 2, 0 (unknown), 1
  # (max brand 2 -> 2 columns, the unknown column dropped).
  got = features.meta_features([0, 2, 1], [2, 0, 1])
  want = np.array([
      [1, 0, 0, 0, 1],
      [0, 0, 1, 0, 0],
      [0, 1, 0, 1, 0],
  ], np.float32)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)


def test_meta_features_all_brands_unknown_has_no_brand_columns():
  got = features.meta_features([1, 0], [0, 0])
  np.testing.assert_array_equal(got, [[0, 1], [1, 0]])


@pytest.mark.parametrize("cats, brands, fragment", [
    ([0, -1], [0, 0], "non-negative"),
    ([0, 1], [0], "same length"),
    ([0.5, 1], [0, 0], "integers"),
])
def test_meta_features_rejects(cats, brands, fragment):
  with pytest.raises(DataError, match=fragment):
    features.meta_features(cats, brands)


# ---------------------------------------------------------------------------
# Doc2Vec


def test_tokenize_lowercases_and_splits_on_non_alphanumerics():
  assert features.tokenize("Red-Pens, 12_pack (X)!") == [
      "red", "pens", "12", "pack", "x"]


def test_train_doc2vec_is_deterministic_for_a_seed():
  a = features.train_doc2vec(TEXTS, ASINS, DIM, seed=3, epochs=EPOCHS)
  b = features.train_doc2vec(TEXTS, ASINS, DIM, seed=3, epochs=EPOCHS)
  c = features.train_doc2vec(TEXTS, ASINS, DIM, seed=4, epochs=EPOCHS)
  ma = features.doc2vec_matrix(a, ASINS)
  assert ma.shape == (5, DIM) and ma.dtype == np.float32
  np.testing.assert_array_equal(ma, features.doc2vec_matrix(b, ASINS))
  assert not np.array_equal(ma, features.doc2vec_matrix(c, ASINS))


def test_doc2vec_does_not_depend_on_python_hash_seed(tmp_path):
  here = features.doc2vec_matrix(
      features.train_doc2vec(TEXTS, ASINS, DIM, seed=1, epochs=EPOCHS), ASINS)
  out = tmp_path / "m.npy"
  script = textwrap.dedent(f"""
      import numpy as np
      from maml_tf.data import features
      m = features.train_doc2vec({TEXTS!r}, {ASINS!r}, {DIM}, seed=1,
                                 epochs={EPOCHS})
      np.save({str(out)!r}, features.doc2vec_matrix(m, {ASINS!r}))
  """)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONHASHSEED="12345",
             PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  subprocess.run([sys.executable, "-c", script], check=True, env=env,
                 cwd=root, timeout=120)
  np.testing.assert_array_equal(here, np.load(out))


def test_train_doc2vec_rejects_duplicate_tags_and_bad_dim():
  with pytest.raises(DataError, match="unique"):
    features.train_doc2vec(["a b", "c d"], ["X", "X"], DIM, 0, epochs=1)
  with pytest.raises(UsageError, match="`dim`"):
    features.train_doc2vec(["a b"], ["X"], 0, 0, epochs=1)
  with pytest.raises(DataError, match="no tokens"):
    features.train_doc2vec(["--", "!!"], ["X", "Y"], DIM, 0, epochs=1)


def test_cached_text_features_reuses_cache_without_training(tmp_path,
                                                           monkeypatch):
  first, path = features.cached_text_features(TEXTS, ASINS, DIM, 0,
                                              str(tmp_path), epochs=EPOCHS)
  key = features.cache_key(TEXTS, ASINS, DIM, 0, EPOCHS)
  assert path == str(tmp_path / f"doc2vec-{key[:16]}.npy")
  assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temp left
  mtime = os.stat(path).st_mtime_ns

  def no_training(*args, **kwargs):
    raise AssertionError("trained again despite a cache file")

  monkeypatch.setattr(features, "train_doc2vec", no_training)
  second, path2 = features.cached_text_features(TEXTS, ASINS, DIM, 0,
                                                str(tmp_path), epochs=EPOCHS)
  assert path2 == path and os.stat(path).st_mtime_ns == mtime
  np.testing.assert_array_equal(first, second)
  # Another seed is another key: it would train (and here must fail).
  with pytest.raises(AssertionError, match="trained again"):
    features.cached_text_features(TEXTS, ASINS, DIM, 1, str(tmp_path),
                                  epochs=EPOCHS)


def test_cache_key_covers_every_input():
  base = features.cache_key(TEXTS, ASINS, 8, 0, 5)
  variants = [
      features.cache_key(TEXTS[:-1] + ["x"], ASINS, 8, 0, 5),
      features.cache_key(TEXTS, ASINS[:-1] + ["x"], 8, 0, 5),
      features.cache_key(TEXTS, ASINS, 9, 0, 5),
      features.cache_key(TEXTS, ASINS, 8, 1, 5),
      features.cache_key(TEXTS, ASINS, 8, 0, 6),
  ]
  assert len({base, *variants}) == 6


def test_corrupt_cache_is_retrained(tmp_path, caplog):
  _, path = features.cached_text_features(TEXTS, ASINS, DIM, 0, str(tmp_path),
                                          epochs=EPOCHS)
  good = np.load(path)
  with open(path, "wb") as f:
    f.write(b"garbage")
  again, path2 = features.cached_text_features(TEXTS, ASINS, DIM, 0,
                                               str(tmp_path), epochs=EPOCHS)
  assert path2 == path and "unreadable" in caplog.text
  np.testing.assert_array_equal(again, good)
  np.testing.assert_array_equal(np.load(path), good)


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
  monkeypatch.setenv("MAML_TF_CACHE", str(tmp_path))
  assert features.default_cache_dir() == str(tmp_path)
  monkeypatch.delenv("MAML_TF_CACHE")
  assert features.default_cache_dir() == os.path.join(
      os.path.expanduser("~"), ".cache", "maml_tf")


@pytest.fixture(scope="module")
def doc2vec_file(tmp_path_factory):
  model = features.train_doc2vec(TEXTS, ASINS, DIM, seed=0, epochs=EPOCHS)
  path = str(tmp_path_factory.mktemp("d2v") / "text.model")
  model.save(path)
  return path, features.doc2vec_matrix(model, ASINS)


def test_doc2vec_model_file_loads_by_asin(doc2vec_file):
  path, full = doc2vec_file
  asins = ["A3", None, "A0"]  # item 1 has no known asin -> zero row
  got = features.load_modality_file("text", path, 3, asins)
  np.testing.assert_array_equal(got[0], full[3])
  np.testing.assert_array_equal(got[1], np.zeros(DIM))
  np.testing.assert_array_equal(got[2], full[0])


def test_doc2vec_missing_asins_name_file_count_and_examples(doc2vec_file):
  path, _ = doc2vec_file
  with pytest.raises(DataError) as e:
    features.load_modality_file("text", path, 3, ["A0", "ZZ1", "ZZ2"])
  msg = str(e.value)
  assert "text.model" in msg and "2 of 3" in msg and "'ZZ1'" in msg
  assert "\n" not in msg


# ---------------------------------------------------------------------------
# .npy dict and matrix files


def _save_dict(path, table):
  np.save(path, table, allow_pickle=True)
  return str(path)


def test_npy_dict_loads_rows_in_item_order(tmp_path):
  path = _save_dict(tmp_path / "img.npy", {
      "A1": np.array([1.0, 2.0]), "A0": np.array([3.0, 4.0]),
      "unused": np.array([9.0, 9.0])})
  got = features.load_modality_file("image", path, 2, ["A0", "A1"])
  np.testing.assert_array_equal(got, [[3, 4], [1, 2]])
  assert got.dtype == np.float32


def test_npy_dict_missing_asins(tmp_path):
  path = _save_dict(tmp_path / "img.npy", {"A0": np.ones(2)})
  with pytest.raises(DataError) as e:
    features.load_modality_file("image", path, 3, ["A0", "B1", "B2"])
  assert "img.npy" in str(e.value) and "2 of 3" in str(e.value)
  assert "'B1'" in str(e.value)


def test_npy_dict_ragged_and_nan(tmp_path):
  path = _save_dict(tmp_path / "r.npy", {"A0": np.ones(2), "A1": np.ones(3)})
  with pytest.raises(DataError, match="differ in length"):
    features.load_modality_file("image", path, 2, ["A0", "A1"])
  path = _save_dict(tmp_path / "n.npy", {"A0": np.ones(2),
                                         "A1": np.array([1.0, np.nan])})
  with pytest.raises(DataError, match=r"row 1 \(item 1\), column 1"):
    features.load_modality_file("image", path, 2, ["A0", "A1"])


def test_npy_dict_python2_pickle_is_read_as_latin1(tmp_path):
  # A Python-2 pickle stores str as raw bytes (SHORT_BINSTRING); a non-ASCII
  # one makes the default ASCII decoding fail, so the loader must retry.
  def py2_str(b):
    return b"U" + bytes([len(b)]) + b

  def floats(values):
    out = b"]("
    for v in values:
      out += b"G" + np.array(v, ">f8").tobytes()
    return out + b"e"

  body = (b"\x80\x02}(" + py2_str(b"A0") + floats([1.0, 2.0]) +
          py2_str(b"A1") + floats([3.0, 4.0]) + py2_str(b"\xe9t\xe9") +
          floats([0.0, 0.0]) + b"u.")
  path = tmp_path / "py2.npy"
  with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": "|O", "fortran_order": False, "shape": ()})
    f.write(body)
  with pytest.raises(UnicodeError):
    np.load(path, allow_pickle=True)
  got = features.load_modality_file("image", str(path), 2, ["A1", "A0"])
  np.testing.assert_array_equal(got, [[3, 4], [1, 2]])


def test_npy_matrix_ok_and_int_converted(tmp_path):
  path = tmp_path / "m.npy"
  np.save(path, np.arange(6).reshape(3, 2))
  got = features.load_modality_file("image", str(path), 3, None)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, [[0, 1], [2, 3], [4, 5]])


def _nan_at_1_2():
  a = np.zeros((3, 4))
  a[1, 2] = np.nan
  return a


def _inf_at_2_0():
  a = np.zeros((3, 4), np.float32)
  a[2, 0] = -np.inf
  return a


@pytest.mark.parametrize("array, fragments", [
    (np.zeros((4, 2)), ["4 rows", "n_items = 3"]),
    (np.zeros(3), ["2-D", "(3,)"]),
    (np.zeros((3, 2, 1)), ["2-D"]),
    (np.array([["a", "b"]] * 3), ["float or integer", "<U1"]),
    (np.zeros((3, 2), bool), ["float or integer", "bool"]),
    (np.zeros((3, 2), complex), ["float or integer", "complex"]),
    (_nan_at_1_2(), ["row 1 (item 1), column 2", "not finite", "nan"]),
    (_inf_at_2_0(), ["row 2 (item 2), column 0", "-inf"]),
    (np.full((3, 1), 1e300), ["row 0 (item 0), column 0", "overflows"]),
], ids=["rows", "1d", "3d", "str", "bool", "complex", "nan", "inf",
        "overflow"])
def test_npy_matrix_rejects(tmp_path, array, fragments):
  path = tmp_path / "feat.npy"
  np.save(path, array)
  with pytest.raises(DataError) as e:
    features.load_modality_file("image", str(path), 3, None)
  msg = str(e.value)
  assert "feat.npy" in msg and "`image`" in msg
  for fragment in fragments:
    assert fragment in msg


def test_truncated_npy_is_a_data_error(tmp_path):
  path = tmp_path / "cut.npy"
  np.save(path, np.ones((100, 10)))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(DataError, match="cut.npy.*cannot read"):
    features.load_modality_file("image", str(path), 100, None)


@pytest.mark.parametrize("content, fragment", [
    (b"just some text\n", "not a loadable gensim Doc2Vec model"),
    (pickle.dumps({"A0": [1.0]}), "not a loadable gensim Doc2Vec model"),
    (b"PK\x03\x04rest", ".npz"),
])
def test_unknown_formats_are_data_errors(tmp_path, content, fragment):
  path = tmp_path / "weird.bin"
  path.write_bytes(content)
  with pytest.raises(DataError) as e:
    features.load_modality_file("text", str(path), 1, ["A0"])
  assert "weird.bin" in str(e.value) and fragment in str(e.value)


def test_missing_file_is_a_data_error(tmp_path):
  with pytest.raises(DataError, match="nope.npy.*not found"):
    features.load_modality_file("image", str(tmp_path / "nope.npy"), 1, None)


def test_dict_file_needs_asins(tmp_path):
  path = _save_dict(tmp_path / "img.npy", {"A0": np.ones(2)})
  with pytest.raises(DataError, match="no `asin` column"):
    features.load_modality_file("image", path, 1, None)


def test_office_meta_file_is_cheaply_consistent():
  # The embedded Office meta table: 40 categories, brand ids up to 341.
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.join(here, "maml_tf", "datasets", "office", "item_meta.tsv")
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
  m = features.meta_features([int(r["category_id"]) for r in rows],
                             [int(r["brand_id"]) for r in rows])
  assert m.shape == (2406, 40 + 341)
  np.testing.assert_array_equal(m[:, :40].sum(1), 1)
  np.testing.assert_array_equal(
      m[:, 40:].sum(1), [int(r["brand_id"]) > 0 for r in rows])
