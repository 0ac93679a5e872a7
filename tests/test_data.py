"""Tests for maml_tf.data: CSV reading, the release layout, Office, splits."""

import dataclasses
import logging
import os
import tempfile

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from maml_tf import data
from maml_tf.data import formats
from maml_tf.errors import DataError, UsageError

HEADER = "itemID,userID,reviewerID,asin\n"
GOOD_TRAIN = HEADER + "0,0,R0,A0\n1,0,R0,A1\n1,1,R1,A1\n2,1,R1,A2\n"
GOOD_TEST = HEADER + "2,0,R0,A2\n0,1,R1,A0\n"


def _write(folder, name, content):
  path = os.path.join(str(folder), name)
  with open(path, "wb") as f:
    f.write(content.encode("utf-8") if isinstance(content, str) else content)
  return path


def _layout(folder, train=GOOD_TRAIN, test=GOOD_TEST):
  if train is not None:
    _write(folder, "train.csv", train)
  if test is not None:
    _write(folder, "test.csv", test)
  return str(folder)


# ---------------------------------------------------------------------------
# bad inputs, each through the loader

BAD_INPUTS = [
    # (id, train, test, file named, fragments of the one-line message)
    ("non_integer", HEADER + "0,0,R,A0\nabc,1,R,A1\n", GOOD_TEST, "train.csv",
     ["line 3: column `itemID` must be a non-negative integer. "
      "Received: 'abc'"]),
    ("negative", HEADER + "0,-4,R,A0\n", GOOD_TEST, "train.csv",
     ["line 2: column `userID` must be a non-negative integer", "'-4'"]),
    ("float", HEADER + "0,1.0,R,A0\n", GOOD_TEST, "train.csv",
     ["line 2: column `userID`", "'1.0'"]),
    ("empty_cell", HEADER + ",0,R,A0\n", GOOD_TEST, "train.csv",
     ["line 2: column `itemID`", "Received: ''"]),
    ("huge", HEADER + "0,0,R,A0\n2147483648,0,R,A1\n", GOOD_TEST, "train.csv",
     ["line 3: column `itemID` must be <= 2147483647", "'2147483648'"]),
    ("huge_in_test", GOOD_TRAIN, HEADER + "0,99999999999,R,A0\n", "test.csv",
     ["line 2: column `userID` must be <= 2147483647"]),
    ("line_counts_blank_lines", HEADER + "\n0,0,R,A0\n\nx,0,R,A0\n", GOOD_TEST,
     "train.csv", ["line 5: column `itemID`", "'x'"]),
    ("line_counts_crlf", (HEADER + "0,0,R,A0\n0,y,R,A0\n").replace(
        "\n", "\r\n"), GOOD_TEST, "train.csv", ["line 3: column `userID`",
                                                "'y'"]),
    ("missing_user_column", "itemID,reviewerID,asin\n0,R,A0\n", GOOD_TEST,
     "train.csv", ["line 1: missing required column `userID`",
                   "header has: itemID, reviewerID, asin"]),
    ("misnamed_column", "ItemID,userID\n0,0\n", GOOD_TEST, "train.csv",
     ["missing required column `itemID`", "did you mean `ItemID`?"]),
    ("no_header", "", GOOD_TEST, "train.csv", ["is empty"]),
    ("header_only_train", HEADER, GOOD_TEST, "train.csv",
     ["has no interactions"]),
    ("short_row", HEADER + "0,0,R\n", GOOD_TEST, "train.csv",
     ["line 2: has 3 fields, the header has 4"]),
    ("duplicate_header", "itemID,userID,itemID\n0,0,0\n", GOOD_TEST,
     "train.csv", ["column `itemID` appears twice"]),
    ("missing_test", GOOD_TRAIN, None, "test.csv", ["file not found"]),
    ("missing_train", None, GOOD_TEST, "train.csv", ["file not found"]),
    ("asin_clash", GOOD_TRAIN, HEADER + "2,0,R0,OTHER\n", "test.csv",
     ["item 2 has asin 'OTHER'", "gives it 'A2'"]),
    ("asin_clash_in_duplicate", HEADER + "0,0,R,A0\n0,0,R,B0\n", GOOD_TEST,
     "train.csv", ["item 0 has asin 'B0'", "gives it 'A0'"]),
    ("bad_time", "itemID,userID,unixReviewTime\n0,0,12\n1,0,soon\n",
     GOOD_TEST, "train.csv", ["line 3: column `unixReviewTime` must be an "
                              "integer", "'soon'"]),
    ("first_bad_in_file_order", HEADER + "0,u,R,A0\nz,0,R,A0\n",
     GOOD_TEST, "train.csv", ["line 2: column `userID`", "'u'"]),
    ("unicode_digit", HEADER + "0,0,R,A0\n\u0663,0,R,A0\n", GOOD_TEST,
     "train.csv", ["line 3: column `itemID`", "'\u0663'"]),
    ("not_utf8", b"itemID,userID\n0,0\n\xff\xfe,1\n", GOOD_TEST, "train.csv",
     ["not UTF-8"]),
    # Cells pandas' C parser would read as integers, which the rule rejects.
    ("plus_sign", HEADER + "0,0,R,A0\n+5,0,R,A1\n", GOOD_TEST, "train.csv",
     ["line 3: column `itemID` must be a non-negative integer", "'+5'"]),
    ("minus_zero", HEADER + "0,0,R,A0\n1,-0,R,A1\n", GOOD_TEST, "train.csv",
     ["line 3: column `userID` must be a non-negative integer", "'-0'"]),
    ("exponent", HEADER + "0,0,R,A0\n1e3,0,R,A1\n", GOOD_TEST, "train.csv",
     ["line 3: column `itemID`", "'1e3'"]),
    ("bool_like", "itemID,userID\nTrue,0\nFalse,1\n", GOOD_TEST, "train.csv",
     ["line 2: column `itemID`", "'True'"]),
    ("plus_time", "itemID,userID,unixReviewTime\n0,0,12\n1,0,+13\n",
     GOOD_TEST, "train.csv", ["line 3: column `unixReviewTime`", "'+13'"]),
    ("huge_time", "itemID,userID,unixReviewTime\n0,0,1000000000000000000\n",
     GOOD_TEST, "train.csv", ["line 2: column `unixReviewTime`"]),
    ("negative_in_fast_path", HEADER + "0,0,R,A0\n1,-7,R,A1\n", GOOD_TEST,
     "train.csv", ["line 3: column `userID` must be a non-negative", "'-7'"]),
]


@pytest.mark.parametrize("train, test, file_name, fragments",
                         [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_one_line_data_error(tmp_path, train, test,
                                              file_name, fragments):
  folder = _layout(tmp_path, train, test)
  with pytest.raises(DataError) as e:
    data.load_release_layout(folder)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(os.path.join(folder, file_name)), msg
  for fragment in fragments:
    assert fragment in msg, msg


def test_message_format_matches_the_documented_example(tmp_path):
  path = _write(tmp_path, "train.csv",
                HEADER + "".join(f"{i},0,R,A{i}\n" for i in range(10)) +
                "abc,0,R,A\n")
  with pytest.raises(DataError) as e:
    data.read_interactions(path)
  assert str(e.value) == (f"{path}: line 12: column `itemID` must be a "
                          f"non-negative integer. Received: 'abc'")


def test_missing_data_dir(tmp_path):
  with pytest.raises(DataError, match="data folder not found"):
    data.load_release_layout(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------
# accepted quirks


def test_bom_crlf_blank_lines_extra_and_reordered_columns(tmp_path):
  train = ("\ufeffasin,extra,userID,itemID,unixReviewTime\r\n"
           "\r\n"
           "A0,x,0,0,100\r\n"
           "A1,y,0,1,200\r\n"
           "   \r\n"
           "A1,z,1,1,300\r\n")
  pairs, asins, times = data.read_interactions(
      _write(tmp_path, "train.csv", train))
  np.testing.assert_array_equal(pairs, [[0, 0], [0, 1], [1, 1]])
  assert pairs.dtype == np.int64
  assert list(asins) == ["A0", "A1", "A1"]
  np.testing.assert_array_equal(times, [100, 200, 300])
  assert times.dtype == np.int64


def test_without_optional_columns(tmp_path):
  pairs, asins, times = data.read_interactions(
      _write(tmp_path, "t.csv", "userID,itemID\n3,4\n"))
  np.testing.assert_array_equal(pairs, [[3, 4]])
  assert asins is None and times is None


def test_release_layout_basic(tmp_path):
  ds = data.load_release_layout(_layout(tmp_path))
  assert (ds.name, ds.n_users, ds.n_items) == ("custom", 2, 3)
  np.testing.assert_array_equal(ds.train, [[0, 0], [0, 1], [1, 1], [1, 2]])
  np.testing.assert_array_equal(ds.test, [[0, 2], [1, 0]])
  assert ds.valid.shape == (0, 2) and ds.features == {}
  assert ds.train_time is None


def test_test_only_items_and_users_count(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="maml_tf")
  ds = data.load_release_layout(
      _layout(tmp_path, test=HEADER + "5,3,R,A5\n"))
  assert (ds.n_users, ds.n_items) == (4, 6)
  assert "1 test users and 1 test items never occur in train" in caplog.text


def test_duplicates_merged_with_warning_and_times_aligned(tmp_path, caplog):
  train = ("itemID,userID,asin,unixReviewTime\n"
           "0,0,A0,10\n1,0,A1,11\n0,0,A0,12\n1,0,A1,13\n2,1,A2,14\n")
  folder = _layout(tmp_path, train=train,
                   test="itemID,userID,asin,unixReviewTime\n2,0,A2,20\n")
  with caplog.at_level(logging.WARNING, logger="maml_tf"):
    ds = data.load_release_layout(folder)
  np.testing.assert_array_equal(ds.train, [[0, 0], [0, 1], [1, 2]])
  np.testing.assert_array_equal(ds.train_time, [10, 11, 14])
  np.testing.assert_array_equal(ds.test_time, [20])
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "merged 2 duplicate" in warnings[0]


def test_test_pair_in_train_kept_with_warning(tmp_path, caplog):
  folder = _layout(tmp_path, test=HEADER + "0,0,R0,A0\n2,0,R0,A2\n")
  with caplog.at_level(logging.WARNING, logger="maml_tf"):
    ds = data.load_release_layout(folder)
  assert len(ds.test) == 2
  assert "1 test pairs also occur in train" in caplog.text


def test_empty_test_is_allowed_with_warning(tmp_path, caplog):
  with caplog.at_level(logging.WARNING, logger="maml_tf"):
    ds = data.load_release_layout(_layout(tmp_path, test=HEADER))
  assert ds.test.shape == (0, 2)
  assert "test.csv: has no interactions" in caplog.text


# ---------------------------------------------------------------------------
# feature files in the release layout


def test_feature_files_ordered_text_image_rest(tmp_path):
  folder = _layout(tmp_path)
  np.save(tmp_path / "zeta.npy", np.ones((3, 1)))
  np.save(tmp_path / "img.npy", {"A0": [0.0, 1.0], "A1": [2.0, 3.0],
                                 "A2": [4.0, 5.0]}, allow_pickle=True)
  np.save(tmp_path / "txt.npy", np.arange(9.0).reshape(3, 3))
  paths = {"zeta": str(tmp_path / "zeta.npy"),
           "image": str(tmp_path / "img.npy"),
           "text": str(tmp_path / "txt.npy")}
  ds = data.load_release_layout(folder, feature_paths=paths)
  assert ds.modalities == ("text", "image", "zeta")
  np.testing.assert_array_equal(ds.features["image"][2], [4, 5])
  assert ds.feature_sources["image"].startswith("image: ")
  assert "dict" in ds.feature_sources["image"]
  assert "matrix" in ds.feature_sources["text"]
  assert ds.feature_matrix().shape == (3, 6)
  only = data.load_release_layout(folder, feature_paths=paths,
                                  modalities=["zeta", "text"])
  assert only.modalities == ("zeta", "text")
  none = data.load_release_layout(folder, feature_paths=paths, modalities=[])
  assert none.modalities == ()


def test_modality_without_path_names_what_exists(tmp_path):
  folder = _layout(tmp_path)
  np.save(tmp_path / "t.npy", np.ones((3, 2)))
  with pytest.raises(UsageError) as e:
    data.load_release_layout(folder, feature_paths={"text": str(
        tmp_path / "t.npy")}, modalities=["text", "image"])
  assert "`image`" in str(e.value) and "given for: text" in str(e.value)


@pytest.mark.parametrize("name", ["Text", "1img", "a-b", ""])
def test_bad_modality_names(tmp_path, name):
  with pytest.raises(UsageError, match="must match"):
    data.load_release_layout(_layout(tmp_path), feature_paths={name: "x"})


def test_feature_rows_must_equal_n_items(tmp_path):
  folder = _layout(tmp_path)
  np.save(tmp_path / "t.npy", np.ones((2, 2)))
  with pytest.raises(DataError, match="has 2 rows, expected n_items = 3"):
    data.load_release_layout(folder,
                             feature_paths={"text": str(tmp_path / "t.npy")})


def test_item_without_asin_gets_zero_row(tmp_path, caplog):
  # Item 1 occurs in no row: no asin, so a dict lookup cannot cover it.
  folder = _layout(tmp_path, train=HEADER + "0,0,R,A0\n", test=HEADER +
                   "2,0,R,A2\n")
  np.save(tmp_path / "img.npy", {"A0": [1.0], "A2": [2.0]},
          allow_pickle=True)
  with caplog.at_level(logging.WARNING, logger="maml_tf"):
    ds = data.load_release_layout(
        folder, feature_paths={"image": str(tmp_path / "img.npy")})
  np.testing.assert_array_equal(ds.features["image"], [[1], [0], [2]])
  assert "1 item ids have no known asin" in caplog.text


# ---------------------------------------------------------------------------
# arrays


def test_from_arrays_ok():
  ds = data.from_arrays(np.array([[0, 1], [0, 1], [1, 0]], np.int32),
                        np.array([[1, 2]]),
                        features={"f": np.ones((4, 2), np.float64)})
  assert (ds.n_users, ds.n_items, ds.name) == (2, 4, "arrays")
  assert ds.train.dtype == np.int64 and len(ds.train) == 2
  assert ds.features["f"].dtype == np.float32


@pytest.mark.parametrize("train, test, kwargs, fragment", [
    (np.zeros((3, 3), int), None, {}, "shape [n, 2]"),
    (np.zeros((3, 2)), None, {}, "integer array"),
    (np.array([[0, -1]]), None, {}, "non-negative"),
    (np.array([[0, 5]]), None, {"features": {"f": np.ones((3, 2))}},
     "item id 5, but n_items = 3"),
    (np.array([[0, 1]]), None, {"features": {"f": np.array([[np.inf]] * 2)}},
     "not finite"),
    (np.array([[0, 1]]), None, {"n_users": 0}, "`n_users`"),
    (np.zeros((0, 2), int), None, {}, "no interactions"),
])
def test_from_arrays_rejects(train, test, kwargs, fragment):
  with pytest.raises(DataError) as e:
    data.from_arrays(train, test, **kwargs)
  assert fragment in str(e.value)


# ---------------------------------------------------------------------------
# validation split


def _random_dataset(seed=0, n_users=300, n_items=200):
  rng = np.random.default_rng(seed)
  pairs = []
  for u in range(n_users):
    n = rng.integers(1, 30)
    pairs += [(u, i) for i in rng.choice(n_items, n, replace=False)]
  pairs = np.array(pairs)
  times = np.arange(len(pairs), dtype=np.int64)
  ds = data.from_arrays(pairs, pairs[:10], n_items=n_items)
  return dataclasses.replace(ds, train_time=times)


def test_split_validation_properties():
  ds = _random_dataset()
  out = data.split_validation(ds, 0.25, seed=7)
  code = lambda p: set(map(tuple, p.tolist()))
  assert not code(out.train) & code(out.valid)
  assert code(out.train) | code(out.valid) == code(ds.train)
  assert len(out.train) + len(out.valid) == len(ds.train)
  n_before = np.bincount(ds.train[:, 0], minlength=ds.n_users)
  n_after = np.bincount(out.train[:, 0], minlength=ds.n_users)
  assert (n_after[n_before > 0] >= 1).all()
  # Users with one item keep it; users with >= 2 give about 25 %.
  multi = np.isin(ds.train[:, 0], np.flatnonzero(n_before >= 2))
  share = len(out.valid) / multi.sum()
  assert abs(share - 0.25) < 0.02, share
  # train_time follows the kept rows (times were 0..n-1 = row index).
  np.testing.assert_array_equal(ds.train[out.train_time], out.train)
  again = data.split_validation(ds, 0.25, seed=7)
  np.testing.assert_array_equal(again.valid, out.valid)
  other = data.split_validation(ds, 0.25, seed=8)
  assert not np.array_equal(other.valid, out.valid)


def test_split_validation_stochastic_rounding_is_unbiased():
  # Every user has 3 items and fraction 0.1: floor(0.3 + U) holds out 1
  # item for ~30 % of users; plain rounding would hold out none.
  pairs = np.array([(u, i) for u in range(2000) for i in range(3)])
  out = data.split_validation(data.from_arrays(pairs, None), 0.1, seed=0)
  assert abs(len(out.valid) / len(pairs) - 0.1) < 0.01


def test_split_validation_zero_and_bad_fractions():
  ds = _random_dataset(n_users=5)
  assert data.split_validation(ds, 0.0, seed=0) is ds
  for bad in (1.0, -0.1, float("nan"), "0.1", True):
    with pytest.raises(UsageError, match="`fraction`"):
      data.split_validation(ds, bad, seed=0)
  with pytest.raises(UsageError, match="already has"):
    data.split_validation(data.split_validation(ds, 0.5, 0), 0.5, 0)


# ---------------------------------------------------------------------------
# property test


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.lists(
    st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    max_size=30), st.booleans())
def test_read_interactions_round_trip(pairs, crlf):
  end = "\r\n" if crlf else "\n"
  text = "itemID,userID,reviewerID,asin" + end + "".join(
      f"{i},{u},R{u},A{i}{end}" for u, i in pairs)
  with tempfile.TemporaryDirectory() as folder:
    got, asins, times = data.read_interactions(_write(folder, "p.csv", text))
  assert got.dtype == np.int64 and got.shape == (len(pairs), 2)
  assert [tuple(r) for r in got.tolist()] == pairs
  assert list(asins) == [f"A{i}" for _, i in pairs]
  assert times is None


# ---------------------------------------------------------------------------
# Office and dispatch (cheap: no 512-d Doc2Vec here)


def test_office_meta_only():
  ds = data.load_office(modalities=["meta"])
  assert (ds.name, ds.n_users, ds.n_items) == ("office", 4874, 2406)
  assert len(ds.train) + len(ds.test) == 52957
  assert ds.modalities == ("meta",)
  assert ds.feature_sources["meta"].startswith("meta: one-hot category (40)")
  assert len(ds.item_labels) == 2406
  assert max(len(x) for x in ds.item_labels) <= 60
  assert ds.train_time.shape == (len(ds.train),)
  assert ds.test_time.shape == (len(ds.test),)
  # Item 2405 occurs only in test and still has a feature row.
  assert 2405 not in ds.train[:, 1] and ds.features["meta"].shape[0] == 2406


def test_office_small_text_uses_cache(tmp_path):
  ds = data.load_office(text_dim=4, cache_dir=str(tmp_path))
  assert ds.modalities == ("text", "meta")
  assert ds.features["text"].shape == (2406, 4)
  assert "not reviews" in ds.feature_sources["text"]
  assert len(os.listdir(tmp_path)) == 1


def test_office_has_no_image():
  with pytest.raises(UsageError, match="Office has no image features"):
    data.load_office(modalities=["text", "image"])
  with pytest.raises(UsageError, match="`sound` is not built into Office"):
    data.load_office(modalities=["sound"])


def test_office_with_own_image_file(tmp_path):
  path = tmp_path / "img.npy"
  np.save(path, np.ones((2406, 3)))
  ds = data.load_office(modalities=["meta", "image"],
                        feature_paths={"image": str(path)})
  assert ds.modalities == ("meta", "image")
  assert ds.feature_sources["image"].startswith(f"image: {path}")


def test_load_dataset_dispatch(tmp_path):
  ds = formats.load_dataset("custom", _layout(tmp_path), None, {}, 8, 0, None)
  assert ds.name == "custom" and ds.n_items == 3
  with pytest.raises(UsageError, match="needs `data_dir`"):
    formats.load_dataset("custom", None, None, {}, 8, 0, None)
  with pytest.raises(UsageError, match="one of 'office', 'custom'"):
    formats.load_dataset("movies", None, None, {}, 8, 0, None)
  with pytest.raises(UsageError, match="only for dataset 'custom'"):
    formats.load_dataset("office", str(tmp_path), ["meta"], {}, 8, 0, None)
  assert formats.load_dataset("office", None, ["meta"], {}, 8, 0,
                           None).name == "office"
