"""Tests for maml_tf.data.formats, the filters, raw ids and vocabularies.

Every fixture is a tiny folder written here into tmp_path.
"""

import os

import numpy as np
import pytest
import scipy.sparse

from maml_tf import data
from maml_tf.data import formats
from maml_tf.data import vocab
from maml_tf.config import Config
from maml_tf.errors import DataError, UsageError


def _write(folder, name, text):
  path = os.path.join(str(folder), name)
  with open(path, "wb") as f:
    f.write(text.encode("utf-8") if isinstance(text, str) else text)
  return path


def _tsv(rows):
  return "".join("\t".join(map(str, r)) + "\n" for r in rows)


RB_HEAD = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
RB_ROWS = [["ann", "i-x", 5, 100], ["ann", "i-y", 3, 101], ["bob", "i-y", 4, 102],
           ["bob", "i-z", 1, 103], ["cy", "i-x", 2, 104]]
MM_HEAD = ["userID", "itemID", "rating", "timestamp", "x_label"]
MM_ROWS = [[0, 0, 5, 10, 0], [0, 1, 4, 11, 0], [1, 1, 3, 12, 0],
           [1, 2, 5, 13, 1], [0, 2, 2, 14, 2], [1, 0, 1, 15, 2]]


def _recbole(folder, head=RB_HEAD, rows=RB_ROWS, name="toy", item=None):
  os.makedirs(folder, exist_ok=True)
  _write(folder, f"{name}.inter", _tsv([head] + rows))
  if item is not None:
    _write(folder, f"{name}.item", item)
  return str(folder)


def _mmrec(folder, head=MM_HEAD, rows=MM_ROWS, image=None, text=None):
  os.makedirs(folder, exist_ok=True)
  _write(folder, "toy.inter", _tsv([head] + rows))
  if image is not None:
    np.save(os.path.join(str(folder), "image_feat.npy"), image)
  if text is not None:
    np.save(os.path.join(str(folder), "text_feat.npy"), text)
  return str(folder)


def _npz(folder, train, test, valid=None):
  os.makedirs(folder, exist_ok=True)
  for name, m in (("train", train), ("test", test), ("valid", valid)):
    if m is not None:
      scipy.sparse.save_npz(os.path.join(str(folder), f"{name}.npz"),
                            scipy.sparse.csr_matrix(np.asarray(m, float)))
  return str(folder)


RELEASE_HEAD = "itemID,userID,reviewerID,asin,rating\n"


def _release(folder, train, test, valid=None):
  os.makedirs(folder, exist_ok=True)
  _write(folder, "train.csv", train)
  _write(folder, "test.csv", test)
  if valid is not None:
    _write(folder, "valid.csv", valid)
  return str(folder)


# ---------------------------------------------------------------------------
# each format loads


def test_release_with_valid_csv(tmp_path):
  folder = _release(tmp_path, RELEASE_HEAD + "0,0,R0,A0,5\n1,0,R0,A1,4\n"
                    "1,1,R1,A1,3\n", RELEASE_HEAD + "2,1,R1,A2,5\n",
                    RELEASE_HEAD + "2,0,R0,A2,1\n")
  ds = formats.load_dataset("custom", folder)
  np.testing.assert_array_equal(ds.valid, [[0, 2]])
  np.testing.assert_array_equal(ds.test, [[1, 2]])
  assert (ds.n_users, ds.n_items) == (2, 3)
  # Integer ids: index = the integer, the vocabulary is the identity.
  assert ds.user_ids is None and ds.item_ids is None


def test_release_raw_ids_from_reviewer_and_asin(tmp_path):
  head = "reviewerID,asin\n"
  folder = _release(tmp_path, head + "u9,B07\nu9,X1\nzz,X1\n", head + "zz,B07\n")
  ds = data.load_release_layout(folder)
  assert list(ds.user_ids) == ["u9", "zz"]
  assert list(ds.item_ids) == ["B07", "X1"]
  np.testing.assert_array_equal(ds.train, [[0, 0], [0, 1], [1, 1]])
  np.testing.assert_array_equal(ds.test, [[1, 0]])


def test_recbole_single_inter_all_train_with_note(tmp_path):
  ds = formats.load_dataset("custom", _recbole(tmp_path), data_format="recbole")
  assert list(ds.user_ids) == ["ann", "bob", "cy"]
  assert list(ds.item_ids) == ["i-x", "i-y", "i-z"]
  np.testing.assert_array_equal(
      ds.train, [[0, 0], [0, 1], [1, 1], [1, 2], [2, 0]])
  assert ds.test.shape == (0, 2)
  np.testing.assert_array_equal(ds.train_time, [100, 101, 102, 103, 104])
  assert any("no test split" in n and "--protocol=split" in n
             for n in ds.notes), ds.notes


def test_recbole_benchmark_split_and_item_features(tmp_path):
  folder = str(tmp_path)
  _write(folder, "toy.train.inter", _tsv([RB_HEAD[:2], ["a", "x"], ["a", "y"],
                                         ["b", "y"]]))
  _write(folder, "toy.valid.inter", _tsv([RB_HEAD[:2], ["b", "x"]]))
  _write(folder, "toy.test.inter", _tsv([RB_HEAD[:2], ["a", "z"]]))
  _write(folder, "toy.item", _tsv([
      ["item_id:token", "emb:float_seq", "cat:token", "tags:token_seq",
       "price:float"],
      ["y", "1 2", "c1", "t1 t2", "9.5"],
      ["x", "3 4", "c2", "t2", "1"],
      ["unused", "5 6", "c3", "t3", "2"]]))
  ds = formats.load_dataset("custom", folder)  # auto -> recbole
  assert list(ds.item_ids) == ["x", "y", "z"]
  np.testing.assert_array_equal(ds.valid, [[1, 0]])
  np.testing.assert_array_equal(ds.test, [[0, 2]])
  assert ds.modalities == ("emb", "cat", "tags")
  np.testing.assert_array_equal(ds.features["emb"], [[3, 4], [1, 2], [0, 0]])
  # One-hot over the tokens of known items, in order of first appearance.
  np.testing.assert_array_equal(ds.features["cat"], [[0, 1], [1, 0], [0, 0]])
  np.testing.assert_array_equal(ds.features["tags"], [[0, 1], [1, 1], [0, 0]])
  assert "1 items without a row are zero" in ds.feature_sources["emb"]


def test_mmrec_loads_labels_and_features(tmp_path):
  image = np.arange(8.0).reshape(4, 2)  # a 4th item with no interaction
  folder = _mmrec(tmp_path, image=image, text=np.ones((4, 3)))
  ds = formats.load_dataset("custom", folder)  # auto -> mmrec
  np.testing.assert_array_equal(ds.train, [[0, 0], [0, 1], [1, 1]])
  np.testing.assert_array_equal(ds.valid, [[1, 2]])
  np.testing.assert_array_equal(ds.test, [[0, 2], [1, 0]])
  assert ds.n_items == 4
  assert ds.modalities == ("text", "image")
  np.testing.assert_array_equal(ds.features["image"], image)
  np.testing.assert_array_equal(ds.test_time, [14, 15])


def test_npz_loads(tmp_path):
  train = [[1, 0, 3], [0, 2, 0]]
  test = [[0, 1, 0], [0, 0, 0]]
  valid = [[0, 0, 0], [0, 0, 4]]
  ds = formats.load_dataset("custom", _npz(tmp_path, train, test, valid))
  np.testing.assert_array_equal(ds.train, [[0, 0], [0, 2], [1, 1]])
  np.testing.assert_array_equal(ds.test, [[0, 1]])
  np.testing.assert_array_equal(ds.valid, [[1, 2]])
  assert (ds.n_users, ds.n_items) == (2, 3)


def test_npz_shapes_must_agree(tmp_path):
  folder = _npz(tmp_path, [[1, 0, 1]], [[0, 1]])
  with pytest.raises(DataError, match=r"test.npz: shape \(1, 2\) differs"):
    formats.load_dataset("custom", folder)


# ---------------------------------------------------------------------------
# the bad-input table, through each format where a case applies


def _rb_rows(bad):
  rows = [list(r) for r in RB_ROWS]
  rows[2] = bad
  return _tsv([RB_HEAD] + rows)


def _mm_rows(bad):
  rows = [list(r) for r in MM_ROWS]
  rows[2] = bad
  return _tsv([MM_HEAD] + rows)


BAD = [
    # (id, format, file name, content, fragments of the one-line message)
    ("rb_rating", "recbole", "toy.inter", _rb_rows(["bob", "i-y", "x", 1]),
     ["line 4: column `rating` must be a finite number. Received: 'x'"]),
    ("rb_nan_rating", "recbole", "toy.inter", _rb_rows(["bob", "i-y", "nan", 1]),
     ["line 4: column `rating`", "'nan'"]),
    ("rb_time", "recbole", "toy.inter", _rb_rows(["bob", "i-y", 1, "soon"]),
     ["line 4: column `timestamp` must be a finite number", "'soon'"]),
    ("rb_empty_user", "recbole", "toy.inter", _rb_rows(["", "i-y", 1, 1]),
     ["line 4: column `user_id` must not be empty"]),
    ("rb_short_row", "recbole", "toy.inter", _rb_rows(["bob", "i-y"]),
     ["line 4: has 2 fields, the header has 4"]),
    ("rb_untyped", "recbole", "toy.inter",
     _tsv([["user_id:token", "item_id"], ["a", "b"]]),
     ["line 1: field `item_id` must be name:type"]),
    ("rb_missing_item", "recbole", "toy.inter",
     _tsv([["user_id:token", "item:token"], ["a", "b"]]),
     ["missing required column `item_id`"]),
    ("rb_empty", "recbole", "toy.inter", "", ["is empty"]),
    ("rb_not_utf8", "recbole", "toy.inter",
     b"user_id:token\titem_id:token\n\xff\xfe\tx\n", ["not UTF-8"]),
    ("rb_header_only", "recbole", "toy.inter", _tsv([RB_HEAD]),
     ["has no interactions"]),
    ("mm_non_integer", "mmrec", "toy.inter", _mm_rows([1, "abc", 3, 12, 0]),
     ["line 4: column `itemID` must be a non-negative integer. "
      "Received: 'abc'"]),
    ("mm_negative", "mmrec", "toy.inter", _mm_rows([-1, 1, 3, 12, 0]),
     ["line 4: column `userID` must be a non-negative integer", "'-1'"]),
    ("mm_huge", "mmrec", "toy.inter", _mm_rows([1, 2147483648, 3, 12, 0]),
     ["line 4: column `itemID` must be <= 2147483647"]),
    ("mm_label", "mmrec", "toy.inter", _mm_rows([1, 1, 3, 12, 3]),
     ["line 4: column `x_label` must be 0 (train), 1 (validation) or 2 "
      "(test). Received: '3'"]),
    ("mm_rating", "mmrec", "toy.inter", _mm_rows([1, 1, "", 12, 0]),
     ["line 4: column `rating` must be a finite number. Received: ''"]),
    ("mm_short_row", "mmrec", "toy.inter", _mm_rows([1, 1, 3]),
     ["line 4: has 3 fields, the header has 5"]),
    ("mm_missing_label", "mmrec", "toy.inter",
     _tsv([["userID", "itemID", "x_label"], [0, 0, 0]]).replace(
         "x_label", "xlabel"), []),  # then no longer MMRec: see below
    ("mm_first_bad_in_file_order", "mmrec", "toy.inter",
     _tsv([MM_HEAD, [0, "z", 1, 1, 0], ["u", 0, 1, 1, 0]]),
     ["line 2: column `itemID`", "'z'"]),
]


@pytest.mark.parametrize("fmt, name, content, fragments",
                         [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_inputs_per_format(tmp_path, fmt, name, content, fragments):
  folder = str(tmp_path)
  _write(folder, name, content)
  if fmt == "mmrec" and not fragments:
    with pytest.raises(DataError, match="no MMRec"):
      formats.load_dataset("custom", folder, data_format="mmrec")
    return
  with pytest.raises(DataError) as e:
    formats.load_dataset("custom", folder, data_format=fmt)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(os.path.join(folder, name)), msg
  for fragment in fragments:
    assert fragment in msg, msg


def test_crlf_bom_blank_lines_and_extra_columns_in_recbole(tmp_path):
  text = ("\ufeffextra:token\titem_id:token\tuser_id:token\r\n\r\n"
          "e\tx\ta\r\n   \r\ne\ty\tb\r\ne\ty\tb\r\n")
  folder = str(tmp_path)
  _write(folder, "t.inter", text)
  ds = formats.load_dataset("custom", folder, data_format="recbole")
  np.testing.assert_array_equal(ds.train, [[0, 0], [1, 1]])  # dup merged


def test_bad_recbole_item_field(tmp_path):
  folder = _recbole(tmp_path, item=_tsv([["item_id:token", "v:float_seq"],
                                          ["i-x", "1 2"], ["i-y", "1 x"]]))
  with pytest.raises(DataError) as e:
    formats.load_dataset("custom", folder)
  assert str(e.value) == (f"{os.path.join(folder, 'toy.item')}: line 3: "
                          f"column `v` must be space-separated numbers. "
                          f"Received: '1 x'")
  _write(folder, "toy.item", _tsv([["item_id:token", "v:float_seq"],
                                   ["i-x", "1 2"], ["i-y", "1 2 3"]]))
  with pytest.raises(DataError, match="line 3: column `v` must have 2 numbers"):
    formats.load_dataset("custom", folder)
  _write(folder, "toy.item", _tsv([["item_id:token", "v:float_seq"],
                                   ["i-x", "1 2"], ["i-x", "1 2"]]))
  with pytest.raises(DataError, match="line 3: column `item_id` must not "
                     "repeat an item"):
    formats.load_dataset("custom", folder)


def test_mmrec_feature_rows_checked(tmp_path):
  folder = _mmrec(tmp_path, image=np.ones((2, 2)))
  with pytest.raises(DataError, match="has 2 rows, expected n_items = 3"):
    formats.load_dataset("custom", folder)


def test_npz_not_sparse(tmp_path):
  folder = str(tmp_path)
  _write(folder, "train.npz", b"PK\x03\x04 nonsense")
  _write(folder, "test.npz", b"x")
  with pytest.raises(DataError, match="train.npz: not a scipy.sparse"):
    formats.load_dataset("custom", folder, data_format="npz")


# ---------------------------------------------------------------------------
# detection


def test_detection_ambiguity_and_nothing_found(tmp_path):
  folder = _release(tmp_path / "d", RELEASE_HEAD + "0,0,R,A,1\n",
                    RELEASE_HEAD + "0,0,R,A,1\n")
  _npz(folder, [[1]], [[1]])
  with pytest.raises(UsageError) as e:
    formats.load_dataset("custom", folder)
  msg = str(e.value)
  assert "\n" not in msg
  assert "ambiguous" in msg and "release (train.csv)" in msg
  assert "npz (train.npz)" in msg and "--data_format=release|npz" in msg
  # Naming the format settles it.
  assert formats.load_dataset("custom", folder, data_format="npz").n_items == 1
  empty = tmp_path / "e"
  empty.mkdir()
  (empty / "notes.txt").write_text("hi")
  with pytest.raises(UsageError, match="found no known data files.*notes.txt"):
    formats.load_dataset("custom", str(empty))


def test_detection_tells_recbole_from_mmrec(tmp_path):
  assert formats.detect_format(_recbole(tmp_path / "r")) == "recbole"
  assert formats.detect_format(_mmrec(tmp_path / "m")) == "mmrec"


# ---------------------------------------------------------------------------
# filters


def test_kcore_hand_checked(tmp_path):
  # Pairs (user, item). k = 2, round 1: u3 (1 item), i3 and i4 (1 user
  # each) go, taking (2, 3) and (3, 4). Round 2: u2 is left with i2 only and
  # goes. Then u0, u1 have 3 items and i0, i1, i2 have 2 users: stable.
  pairs = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 2), (2, 3),
           (3, 4)]
  rows = [["user_id:token", "item_id:token"]] + [[f"u{u}", f"i{i}"]
                                                 for u, i in pairs]
  folder = str(tmp_path)
  _write(folder, "k.inter", _tsv(rows))
  ds = formats.load_dataset("custom", folder, kcore=2)
  got = {(ds.user_ids[u], ds.item_ids[i]) for u, i in ds.train}
  assert got == {(f"u{u}", f"i{i}") for u in (0, 1) for i in (0, 1, 2)}
  assert (ds.n_users, ds.n_items) == (2, 3)
  note = [n for n in ds.notes if n.startswith("--kcore=2")]
  assert note == ["--kcore=2 (2 rounds): 4 users, 5 items, 9 interactions -> "
                  "2 users, 3 items, 6 interactions"], ds.notes
  # k = 1 changes nothing; k = 3 drops i0, i1 (2 users), then everyone.
  assert len(formats.load_dataset("custom", folder, kcore=1).train) == 9
  with pytest.raises(DataError, match="no train interactions are left"):
    formats.load_dataset("custom", folder, kcore=3)


def test_kcore_keeps_integer_ids_of_release_layout(tmp_path):
  head = "itemID,userID\n"
  folder = _release(tmp_path, head + "0,0\n1,0\n0,1\n1,1\n2,2\n",
                    head + "0,2\n")
  ds = data.load_release_layout(folder, kcore=2)
  np.testing.assert_array_equal(ds.train, [[0, 0], [0, 1], [1, 0], [1, 1]])
  # u2 had i2 (train) and i0 (test): 2 distinct items, but i2 has 1 user.
  assert ds.test.shape == (0, 2)
  assert (ds.n_users, ds.n_items) == (3, 3)  # numbers kept, not renumbered


def test_min_rating(tmp_path):
  ds = formats.load_dataset("custom", _recbole(tmp_path), min_rating=3)
  got = {(ds.user_ids[u], ds.item_ids[i]) for u, i in ds.train}
  assert got == {("ann", "i-x"), ("ann", "i-y"), ("bob", "i-y")}
  assert list(ds.user_ids) == ["ann", "bob"]  # cy rated only 2: gone
  assert ds.notes[0] == ("--min_rating=3: 3 users, 3 items, 5 interactions "
                         "-> 2 users, 2 items, 3 interactions")
  np.testing.assert_array_equal(ds.train_time, [100, 101, 102])


def test_min_rating_needs_a_rating_column(tmp_path):
  folder = _recbole(tmp_path, head=RB_HEAD[:2], rows=[r[:2] for r in RB_ROWS])
  with pytest.raises(UsageError) as e:
    formats.load_dataset("custom", folder, min_rating=4)
  assert "`--min_rating` needs a rating column" in str(e.value)
  assert "toy.inter has none" in str(e.value)


def test_min_rating_on_release_ratings_and_npz_values(tmp_path):
  folder = _release(tmp_path / "r", RELEASE_HEAD + "0,0,R,A0,5\n1,0,R,A1,2\n",
                    RELEASE_HEAD + "1,1,R,A1,4\n")
  ds = data.load_release_layout(folder, min_rating=4)
  np.testing.assert_array_equal(ds.train, [[0, 0]])
  ds = formats.load_dataset("custom", _npz(tmp_path / "n", [[5, 1]], [[0, 4]]),
                         min_rating=2)
  np.testing.assert_array_equal(ds.train, [[0, 0]])


# ---------------------------------------------------------------------------
# vocabularies


def test_vocab_round_trip_and_lookup(tmp_path):
  ds = formats.load_dataset("custom", _recbole(tmp_path / "d"))
  odd = np.array(["tab\there", "new\nline", "back\\slash", "ann"], object)
  ds = ds.__class__(**{**ds.__dict__, "n_users": 4, "user_ids": odd})
  vocab.write_vocab(str(tmp_path / "w"), ds)
  back = vocab.load_vocab(str(tmp_path / "w"))
  assert list(back["users"].raw_ids()) == list(odd)
  assert list(back["items"].raw_ids()) == ["i-x", "i-y", "i-z"]
  np.testing.assert_array_equal(back["items"].lookup(["i-z", "i-x"]), [2, 0])
  with pytest.raises(DataError) as e:
    back["items"].lookup(["i-x", "nope"])
  assert "unknown item id 'nope'" in str(e.value)
  assert "items.tsv" in str(e.value) and "\n" not in str(e.value)
  # No temporary files are left behind.
  assert sorted(os.listdir(tmp_path / "w" / "vocab")) == ["items.tsv",
                                                         "users.tsv"]


def test_identity_vocab_for_integer_ids(tmp_path):
  ds = data.from_arrays(np.array([[0, 2], [3, 1]]), None)
  vocab.write_vocab(str(tmp_path), ds)
  back = vocab.load_vocab(str(tmp_path))
  assert list(back["users"].raw_ids()) == ["0", "1", "2", "3"]
  np.testing.assert_array_equal(back["users"].lookup([3, "1"]), [3, 1])
  with pytest.raises(DataError, match="unknown user id '4'"):
    back["users"].lookup(["4"])
  with pytest.raises(DataError, match="unknown user id"):
    vocab.Vocab("users", size=2).lookup(["x"])


def test_check_workdir_against_the_data_loaded_again(tmp_path):
  import dataclasses  # pylint: disable=g-import-not-at-top
  ds = formats.load_dataset("custom", _recbole(tmp_path / "d"))
  work = str(tmp_path / "w")
  assert vocab.check_workdir(work, ds) is False  # no vocab/ yet: nothing to check
  vocab.write_vocab(work, ds)
  assert vocab.check_workdir(work, ds) is True
  swapped = dataclasses.replace(ds, item_ids=np.array(["i-x", "i-z", "i-y"], object))
  with pytest.raises(DataError) as e:
    vocab.check_workdir(work, swapped)
  path = os.path.join(work, "vocab", "items.tsv")
  assert str(e.value) == (f"{path}: item index 1 is 'i-y' in the run, 'i-z' in "
                          "the data loaded now: export with the data the run "
                          "trained on")
  more = dataclasses.replace(ds, n_users=4, user_ids=np.array(
      ["ann", "bob", "cy", "dee"], object))
  with pytest.raises(DataError, match=r"users.tsv: the run has 3 users, the data "
                     r"loaded now 4"):
    vocab.check_workdir(work, more)
  # Integer ids (identity) written, then loaded again as the identity: equal.
  ints = data.from_arrays(np.array([[0, 2], [3, 1]]), None)
  vocab.write_vocab(str(tmp_path / "i"), ints)
  assert vocab.check_workdir(str(tmp_path / "i"), ints) is True


def test_malformed_vocab_file(tmp_path):
  os.makedirs(tmp_path / "vocab")
  (tmp_path / "vocab" / "users.tsv").write_text("index\traw_id\n1\tx\n")
  (tmp_path / "vocab" / "items.tsv").write_text("index\traw_id\n")
  with pytest.raises(DataError, match="users.tsv: line 2: must be '0<TAB>"):
    vocab.load_vocab(str(tmp_path))


# ---------------------------------------------------------------------------
# flags


@pytest.mark.parametrize("kwargs, message", [
    ({"kcore": -1}, "`--kcore` must be >= 0. Received: -1"),
    ({"kcore": 1.5}, "`--kcore` must be an integer. Received: 1.5"),
    ({"min_rating": float("nan")}, "`--min_rating` must be finite. Received: nan"),
    ({"data_format": "csv"}, "`--data_format` must be one of auto, release, "
     "recbole, mmrec, npz. Received: 'csv'"),
    ({"data_format": "npz"}, "`--data_format` must be auto or release with "
     "--dataset=office"),
])
def test_new_flags_are_range_checked(kwargs, message):
  with pytest.raises(UsageError) as e:
    Config(**kwargs).validate()
  assert message in str(e.value)
  assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------
# string ids end to end


def test_string_ids_end_to_end(tmp_path):
  from maml_tf import train  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  folder = tmp_path / "d"
  folder.mkdir()
  head = [["user_id:token", "item_id:token"]]
  rows = {"train": [], "valid": [], "test": []}
  for u in range(12):
    for j, i in enumerate(rng.choice(15, 5, replace=False)):
      split = "train" if j < 3 else ("valid", "test")[j - 3]
      rows[split].append([f"user-{u}", f"sku:{i:03d}"])
  for split, r in rows.items():
    _write(folder, f"shop.{split}.inter", _tsv(head + r))
  _write(folder, "shop.item", _tsv(
      [["item_id:token", "vec:float_seq"]] +
      [[f"sku:{i:03d}", f"{i} {i % 3}"] for i in range(15)]))
  workdir = tmp_path / "w"
  config = Config(dataset="custom", data_dir=str(folder), workdir=str(workdir),
                  embed_dim=4, hidden_layer_dim=8, batch_size=8, num_neg=2,
                  train_steps=2, eva_batches=2, topk=(5,),
                  select_metric="ndcg@5", export=False, tensorboard=False)
  summary = train.train_and_evaluate(config, verbose=0)
  assert summary["finished"] is True
  # The given validation split picks the best round.
  assert "valid" in summary["selection"], summary["selection"]
  assert summary["modalities"] == ["vec"]
  back = vocab.load_vocab(str(workdir))
  users = list(back["users"].raw_ids())
  assert users == [f"user-{u}" for u in range(12)]
  items = list(back["items"].raw_ids())
  assert sorted(items) == sorted({r[1] for split in rows.values()
                                  for r in split})
  ds = train.load_data(config)
  # Each raw test pair maps back to itself through the written vocabulary.
  for split in ("valid", "test"):
    raw_pairs = {(users[u], items[i]) for u, i in getattr(ds, split)}
    assert raw_pairs == {tuple(r) for r in rows[split]}


def test_release_rating_column_read_only_for_min_rating(tmp_path):
  # Before --min_rating a rating column was never read: junk there still
  # loads; asking to filter on it names the bad cell.
  folder = _release(tmp_path, RELEASE_HEAD + "0,0,R,A0,5\n1,0,R,A1,n/a\n",
                    RELEASE_HEAD + "1,1,R,A1,4\n")
  assert len(data.load_release_layout(folder).train) == 2
  with pytest.raises(DataError) as e:
    data.load_release_layout(folder, min_rating=4)
  assert str(e.value) == (f"{os.path.join(folder, 'train.csv')}: line 3: "
                          f"column `rating` must be a finite number. "
                          f"Received: 'n/a'")
