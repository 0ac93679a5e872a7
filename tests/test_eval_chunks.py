"""How full ranking, two-stage re-ranking and the exported signatures cut
the users x catalogue work into chunks.

Dot-product models score the whole catalogue for as many users as fill a
cache-sized block of scores, and take its top k by blocks; a model
with per-pair activations (MAML's attention) gets chunks whose
[users, items, pair_width] block stays near the cache budget, and ranks
exactly as with one catalogue-wide chunk.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from maml_tf.evaluate import full_ranking
from maml_tf.evaluate import metrics as metrics_lib
from maml_tf.models.base import PAIR_CACHE_FLOATS


def test_dot_product_chunks_fill_the_score_block_whatever_the_width():
  # Users fill SCORE_BLOCK_FLOATS (6 x 2^20) of [users, n_items] scores, at
  # most 512; the table width does not count (one product of tables).
  assert full_ranking.SCORE_BLOCK_FLOATS == 6 << 20
  assert full_ranking.default_chunks(2406, 64) == (512, 2406)
  assert full_ranking.default_chunks(23_033, 64)[0] == 273
  assert full_ranking.default_chunks(100_000, 64) == (62, 7693)  # 13 item chunks
  assert full_ranking.default_chunks(100_000, 256) == (62, 7693)
  assert full_ranking.default_chunks(10 << 20, 64)[0] == 1


@pytest.mark.parametrize("n_items,width", [(2406, 320), (23_033, 320),
                                           (100_000, 320), (500, 40), (7, 20)])
def test_per_pair_chunks_fit_the_cache_budget_and_cover_the_catalogue(
    n_items, width):
  cache = PAIR_CACHE_FLOATS
  users, items = full_ranking.default_chunks(n_items, width, pair_width=width)
  # Users: the 2^25-float budget over items in chunks of at most 8,192.
  item_chunk = -(-n_items // -(-n_items // 8192))
  assert users == max(1, min(512, (1 << 25) // (item_chunk * width)))
  n_chunks = -(-n_items // items)
  assert items <= n_items and n_chunks * items - n_items < n_chunks  # balanced
  assert users * items * width <= cache or items <= 8


def test_office_sized_maml_chunks():
  # MAML at Office's size (K = 64, so 5K = 320): 43 users x 2,406 items held
  # 33M floats (132 MB) of activations in one chunk; now 32 item chunks of
  # 76, 1M floats (4 MB) each.
  users, items = full_ranking.default_chunks(2406, 320, pair_width=320)
  assert (users, items) == (43, 76)
  assert users * items * 320 <= PAIR_CACHE_FLOATS


def test_maml_declares_its_per_pair_width_and_mf_none():
  from maml_tf.models.mf import MF
  m = helpers.maml_model()
  assert m.pair_width == 5 * helpers.MAML_K == m.score_width
  assert helpers.maml_model(attention="none").pair_width == 0
  assert MF(4, 5, embed_dim=3).pair_width == 0


def test_maml_ranks_the_same_in_item_chunks():
  m = helpers.maml_model()
  rng = np.random.default_rng(3)
  pairs = np.array([(u, i) for u in range(helpers.MAML_USERS)
                    for i in range(helpers.MAML_ITEMS)])
  rng.shuffle(pairs)
  train, test = pairs[:30], pairs[30:]
  whole = full_ranking.Evaluator(m, train, test, (3, 5), jit_compile=False)
  chunked = full_ranking.Evaluator(m, train, test, (3, 5), item_chunk=2,
                                   jit_compile=False)
  assert chunked.item_chunk == 2 and whole.item_chunk == helpers.MAML_ITEMS
  np.testing.assert_array_equal(chunked.top_k(), whole.top_k())
  assert chunked() == whole()


def test_two_stage_chunks_cut_per_pair_activations_to_at_least_64_users():
  from maml_tf.evaluate import two_stage
  # Dot-product models (and MAML's first stage alone): as before.
  assert two_stage.chunk_users(2406, 200, 64) == 512
  # MAML's re-ranking at Office's size, N = 200: 512 users held 33M floats.
  assert two_stage.chunk_users(2406, 200, 320, pair_width=320) == 64
  # Few candidates: the cache budget itself decides (2^20 / (10 x 320)).
  assert two_stage.chunk_users(2406, 10, 320, pair_width=320) == 327
  # Never above the memory budget's own count.
  assert two_stage.chunk_users(100_000, 5000, 320, pair_width=320) == 20


def test_serving_cuts_per_pair_scoring_to_the_cache_budget_with_the_same_lists():
  from maml_tf.export import signatures
  from maml_tf.models import base
  # The rule itself: the given chunk, or as many equal chunks as the cache
  # budget needs, 8 items at least.
  assert base.cache_item_chunk(2406, 8192, 10, 0) == 2406
  assert base.cache_item_chunk(30, 7, 2, 0) == 7
  assert base.cache_item_chunk(2406, 8192, 10, 320) == 301  # 8 x 301
  assert base.cache_item_chunk(2406, 100, 10, 320) == 100  # already fits
  assert base.cache_item_chunk(100_000, 8192, 1, 0) == 8192
  assert base.cache_item_chunk(50, 8192, 4096, 320) == 8  # floor of 8 items
  from maml_tf.data.dataset import Dataset
  m = helpers.maml_model()
  pairs = np.array([(u, (u + j) % helpers.MAML_ITEMS)
                    for u in range(helpers.MAML_USERS) for j in range(3)])
  ds = Dataset(name="tiny", n_users=helpers.MAML_USERS, n_items=helpers.MAML_ITEMS,
               train=pairs[::3], test=pairs[1::3])
  cut = signatures.ServingGraphs(m, ds, budget=1 << 23)
  users = np.arange(helpers.MAML_USERS, dtype=np.int32)
  assert cut.item_chunk == helpers.MAML_ITEMS  # tiny: one chunk fits
  small = signatures.ServingGraphs(m, ds, budget=1 << 23)
  small.item_chunk = 2  # as the budget would cut a large catalogue
  whole, chunked = cut.recommend(users), small.recommend(users)
  assert tf.nest.flatten(whole)
  for a, b in zip(tf.nest.flatten(whole), tf.nest.flatten(chunked)):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


# ------------------------------------------------------- top k by blocks


def _oracle_top_k(scores, k):
  """Best k per row by (value descending, id ascending), in numpy."""
  order = np.lexsort((np.arange(scores.shape[1])[None].repeat(len(scores), 0),
                      -scores), axis=1)[:, :k]
  return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("n_items,block", [(1000, 8), (1003, 8), (5000, 16), (300, 128)])
def test_top_k_by_blocks_is_top_k_with_ties_and_minus_inf(n_items, block):
  rng = np.random.default_rng(n_items)
  k = 7
  # Few distinct values: many ties, across and inside blocks; -inf rows
  # parts (excluded items), and a row with fewer than k finite scores.
  scores = rng.integers(0, 12, (9, n_items)).astype(np.float32)
  scores[rng.random(scores.shape) < 0.3] = -np.inf
  scores[4, 3:] = -np.inf
  scores[5] = rng.standard_normal(n_items).astype(np.float32)
  values, items = full_ranking.top_k_by_blocks(tf.constant(scores), k, block=block)
  want_values, want_items = _oracle_top_k(scores, k)
  np.testing.assert_array_equal(values.numpy(), want_values)
  finite = np.isfinite(want_values)  # -inf places: any item, the evaluator says -1
  np.testing.assert_array_equal(items.numpy()[finite], want_items[finite])
  plain_values, plain_items = tf.math.top_k(tf.constant(scores), k)
  np.testing.assert_array_equal(items.numpy()[finite], plain_items.numpy()[finite])


def test_top_k_by_blocks_takes_the_blocked_path_on_a_large_catalogue(monkeypatch):
  calls = []
  real = tf.math.top_k
  monkeypatch.setattr(tf.math, "top_k", lambda x, k: calls.append(x.shape[-1]) or real(x, k))
  scores = tf.random.stateless_normal([3, 4096], seed=[1, 2])
  full_ranking.top_k_by_blocks(scores, 5, block=64)
  assert calls == [64, 5 * 64]  # the block maxima, then the 5 chosen blocks' items
  calls.clear()
  full_ranking.top_k_by_blocks(scores[:, :640], 5, block=64)  # 10 blocks <= 2 x 5
  assert calls == [640]


def _random_mf(n_users, n_items, dim, n_train, seed):
  """(an MF at its initial weights, n_train random train pairs, one random
  test item per user)."""
  from maml_tf.models import mf
  rng = np.random.default_rng(seed)
  m = mf.MF(n_users, n_items, embed_dim=dim, seed=0)
  train = np.stack([rng.integers(0, n_users, n_train),
                    rng.integers(0, n_items, n_train)], 1)
  test = np.stack([np.arange(n_users), rng.integers(0, n_items, n_users)], 1)
  return m, train, test


def test_the_evaluator_ranks_a_large_catalogue_as_plain_top_k(monkeypatch):
  # 3,000 items (> 2 x 10 blocks of 16): the evaluator's blocked top k
  # against the plain top k of the same scores (metrics.top_k_excluding).
  calls = []
  real = tf.math.top_k
  monkeypatch.setattr(tf.math, "top_k", lambda x, k: calls.append(x.shape[-1]) or real(x, k))
  n_users, n_items = 12, 3000
  m, train, test = _random_mf(n_users, n_items, dim=4, n_train=400, seed=3)
  ev = full_ranking.Evaluator(m, train, test, ks=(10,), user_chunk=5)
  got = ev.top_k()
  assert calls == [188, 10 * 16]  # traced once, blocked: 188 blocks, 10 chosen
  scores = m.score_items(tf.constant(np.arange(n_users), tf.int32)).numpy()
  known = [train[train[:, 0] == u, 1] for u in range(n_users)]
  np.testing.assert_array_equal(got, metrics_lib.top_k_excluding(scores, known, 10))


@pytest.mark.parametrize("jit_compile", [True, False])
def test_padded_exclusions_leave_unknown_items_alone(jit_compile):
  # Chunks of 2 users: users 0 and 1 know nothing (their chunk's exclusion
  # list is all padding, entries (0, 0)), users 2 and 3 know item 0, users
  # 4 and 5 know items 0-3. Item 0 scores highest for everyone, so padding
  # that excluded (0, 0) would change user 0's top item.
  from maml_tf.models import mf
  n_users, n_items = 6, 700  # > 2 x 20 blocks of 16: the blocked top k
  m = mf.MF(n_users, n_items, embed_dim=2, seed=0)
  m.user_embeddings.assign(np.ones((n_users, 2), np.float32))
  items = np.linspace(1.0, -1.0, n_items, dtype=np.float32)
  m.item_embeddings.assign(np.stack([items, items], 1))
  train = np.array([(2, 0), (3, 0)] + [(u, i) for u in (4, 5) for i in range(4)])
  test = np.stack([np.arange(n_users), np.full(n_users, 9)], 1)
  ev = full_ranking.Evaluator(m, train, test, ks=(20,), user_chunk=2,
                              jit_compile=jit_compile)
  got = ev.top_k()
  assert got[:2, 0].tolist() == [0, 0] and got[2:4, 0].tolist() == [1, 1]
  assert got[4:, 0].tolist() == [4, 4]
  known = [train[train[:, 0] == u, 1] for u in range(n_users)]
  scores = m.score_items(tf.constant(np.arange(n_users), tf.int32)).numpy()
  np.testing.assert_array_equal(got, metrics_lib.top_k_excluding(scores, known, 20))


def test_chunks_follow_a_change_of_users_or_chunk_size():
  # The chunks' users and exclusions are built once, and again when the
  # evaluator's users or chunk size change (the benchmark times subsets).
  n_users = 11
  m, train, test = _random_mf(n_users, 50, dim=3, n_train=120, seed=5)
  ev = full_ranking.Evaluator(m, train, test, ks=(5,), user_chunk=4)
  whole = ev.top_k()
  assert whole.shape == (n_users, 5)
  full = ev()
  full_users = ev.per_user
  ev.users, ev.targets = ev.users[3:7], ev.targets[3:7]
  np.testing.assert_array_equal(ev.top_k(), whole[3:7])
  ev.user_chunk = 3
  np.testing.assert_array_equal(ev.top_k(), whole[3:7])
  # The metrics' index of the targets follows them too.
  part = ev()
  np.testing.assert_array_equal(ev.per_user["recall@5"],
                                full_users["recall@5"][3:7])
  assert part["recall@5"] == pytest.approx(
      float(np.mean(full_users["recall@5"][3:7])))
  assert full["recall@5"] == pytest.approx(
      float(np.mean(full_users["recall@5"])))


def test_a_round_prepares_the_models_scoring_once_for_every_split(tmp_path):
  # prepare_scoring (LightGCN's propagation, LATTICE's kNN graphs) runs once
  # a round, not once per split: the EvaluationCallback evaluates its
  # splits inside `same_weights`; an evaluation outside prepares its own.
  from maml_tf.evaluate.callback import EvaluationCallback
  m, train, test = _random_mf(30, 50, dim=3, n_train=200, seed=8)
  calls = []
  real = m.prepare_scoring
  m.prepare_scoring = lambda: calls.append(1) or real()
  valid = test[:15]
  splits = {"valid": full_ranking.Evaluator(m, train, valid, ks=(5,)),
            "test": full_ranking.Evaluator(m, train, test, ks=(5,))}
  alone = {split: ev() for split, ev in splits.items()}
  assert len(calls) == 2
  callback = EvaluationCallback(splits, eva_batches=1, workdir=str(tmp_path),
                                select_metric="ndcg@5")
  record = callback.evaluate(1)
  assert len(calls) == 3
  assert {split: record[split] for split in splits} == alone
  with full_ranking.same_weights([m, m]):
    splits["test"]()
    with full_ranking.same_weights([m]):
      splits["valid"]()
    splits["test"]()
  assert len(calls) == 4
  splits["test"]()
  assert len(calls) == 5


@pytest.mark.parametrize("by_ranks", [True, False])
def test_a_chunk_ranked_alone_is_the_evaluations_chunk(monkeypatch, by_ranks):
  # chunk_hits(i) ranks chunk i at the whole evaluation's padded widths
  # (what the benchmark times), by the path __call__ takes: the same rows as
  # the hits of the evaluation's top k.
  monkeypatch.setattr(full_ranking, "ranks_targets", lambda *_: by_ranks)
  n_users = 11
  m, train, test = _random_mf(n_users, 50, dim=3, n_train=120, seed=6)
  test = np.concatenate([test, test[::3] + [0, 1]]) % [n_users, 50]
  ev = full_ranking.Evaluator(m, train, test, ks=(5,), user_chunk=4)
  assert ev.by_ranks is by_ranks
  whole = metrics_lib.hits(ev.top_k(), ev.target_index)
  assert whole.any()
  m.prepare_scoring()
  for i, start in enumerate(range(0, n_users, 4)):
    real = min(4, n_users - start)
    np.testing.assert_array_equal(ev.chunk_hits(i), whole[start:start + real])


def _tied_case(n_items, seed):
  """An MF whose scores tie often (small integer embeddings), random known
  items, 1-6 targets a user with some of them known (scored -inf), and one
  user who knows all but 3 items (fewer candidates than k)."""
  from maml_tf.models import mf
  rng = np.random.default_rng(seed)
  n_users = 9
  m = mf.MF(n_users, n_items, embed_dim=2, seed=0)
  m.user_embeddings.assign(rng.integers(-1, 2, (n_users, 2)).astype(np.float32))
  m.item_embeddings.assign(rng.integers(-2, 3, (n_items, 2)).astype(np.float32))
  train = np.stack([rng.integers(0, n_users, 6 * n_users),
                    rng.integers(0, n_items, 6 * n_users)], 1)
  train = np.concatenate([train, [(8, i) for i in range(3, n_items)]])
  test = np.concatenate([np.stack([np.full(n, u), rng.choice(n_items, n, replace=False)], 1)
                         for u, n in enumerate(rng.integers(1, 7, n_users))])
  test = np.concatenate([test, train[:4], [(8, 0), (8, 5)]])
  return m, train, test


@pytest.mark.parametrize("n_items,jit_compile,seed", [
    (60, True, 0), (60, False, 1), (700, True, 2), (700, False, 3)])
def test_the_targets_ranks_give_the_top_ks_metrics(monkeypatch, n_items, jit_compile, seed):
  # The two ways to the metrics, forced, on the same weights: the targets'
  # ranks (ties to the lower id, known targets never hit) and the top k
  # (plain at 60 items, by blocks at 700), per user and averaged.
  m, train, test = _tied_case(n_items, seed)
  got = {}
  for by_ranks in (True, False):
    monkeypatch.setattr(full_ranking, "ranks_targets", lambda *_, r=by_ranks: r)
    ev = full_ranking.Evaluator(m, train, test, ks=(1, 5, 10), user_chunk=4,
                                jit_compile=jit_compile)
    assert ev.by_ranks is by_ranks
    got[by_ranks] = (ev(), ev.per_user)
  assert got[True][0] == got[False][0]
  for name, values in got[False][1].items():
    np.testing.assert_array_equal(got[True][1][name], values, err_msg=name)
  assert 0 < got[True][0]["recall@10"] < 1
  # And against the oracle: numpy's own top k of the same scores.
  scores = m.score_items(tf.constant(np.arange(9), tf.int32)).numpy()
  known = [train[train[:, 0] == u, 1] for u in range(9)]
  topk = metrics_lib.top_k_excluding(scores, known, 10)
  want = metrics_lib.per_user_metrics(topk, [test[test[:, 0] == u, 1] for u in range(9)],
                                      (1, 5, 10))
  for name, values in want.items():
    np.testing.assert_allclose(got[True][1][name], values, err_msg=name)


def test_a_target_scored_nan_is_never_a_hit(monkeypatch):
  # By ranks, a NaN score is above nothing and below nothing: a target
  # scored NaN is a miss, an item scored NaN pushes no target down.
  from maml_tf.models import mf
  monkeypatch.setattr(full_ranking, "ranks_targets", lambda *_: True)
  m = mf.MF(1, 6, embed_dim=1, seed=0)
  m.user_embeddings.assign([[1.0]])
  m.item_embeddings.assign(np.array([[np.nan], [5], [4], [3], [2], [1]], np.float32))
  ev = full_ranking.Evaluator(m, np.zeros((0, 2)), [(0, 0), (0, 1), (0, 3)], ks=(2,))
  ev()
  assert ev.per_user["recall@2"].tolist() == [1 / 3]  # item 1 first, 3 third


def test_the_evaluator_ranks_targets_when_the_compares_cost_less():
  # ranks_targets' rule at the sizes it was measured at: Office's test
  # split (3.3 targets a user, 2,406 items) by ranks, 3.3 targets over
  # 100,000 items by the top k; the evaluator asks it with its own mean.
  assert full_ranking.ranks_targets(2406, 3.3)
  assert full_ranking.ranks_targets(23033, 1.0)
  assert not full_ranking.ranks_targets(23033, 8.0)
  assert not full_ranking.ranks_targets(100_000, 3.3)
  m, train, test = _random_mf(10, 100_000 // 40, dim=2, n_train=30, seed=1)
  few = full_ranking.Evaluator(m, train, test, ks=(5,))
  many = full_ranking.Evaluator(m, train, np.concatenate([test + [0, d] for d in range(40)]), ks=(5,))
  assert few.by_ranks and not many.by_ranks


def test_the_benchmarks_evaluation_figures_are_the_evaluators(tmp_path):
  # scripts/bench_models.eval_figures: two chunks timed at the evaluation's
  # shape, then one whole evaluation whose metrics are a fresh Evaluator's;
  # or, over --max_eval_s, not run, with the measured chunk's time.
  import os
  import sys
  sys.path.insert(0, os.path.join(helpers.ROOT, "scripts"))
  import bench_models  # noqa: E402
  from maml_tf.data.dataset import Dataset
  n_users = 600
  m, train, test = _random_mf(n_users, 40, dim=3, n_train=3000, seed=7)
  ds = Dataset(name="tiny", n_users=n_users, n_items=40, train=train, test=test)
  out, _ = bench_models.eval_figures(m, ds, max_eval_s=0)
  assert out["chunks"] == 2 and out["users"] == n_users
  assert out["first_chunk_s"] > 0 and out["chunk_s"] > 0 and out["inputs_s"] >= 0
  expected = full_ranking.Evaluator(m, train, test, ks=bench_models.KS)()
  assert out["metrics"] == pytest.approx(expected, abs=1e-12)
  skipped, _ = bench_models.eval_figures(m, ds, max_eval_s=1e-9)
  assert skipped["skipped"].startswith("not run: 2 chunks of 512 users, ")
  assert "seconds" not in skipped


def test_a_model_scoring_by_item_chunks_ranks_by_blocks():
  # MAML scores the catalogue in item chunks (its score width is not static
  # in the graph); the evaluator's blocked top k over 400 items (> 2 x 5
  # blocks of 16) is the plain top k of its scores.
  from maml_tf.models.maml import MAML
  rng = np.random.default_rng(11)
  n_users, n_items = 7, 400
  m = MAML(n_users, n_items, feature_dim=6, embed_dim=4, hidden_dim=8,
           attention="scaled", mode="faithful", seed=0)
  m.set_item_features(rng.normal(size=(n_items, 6)))
  train = np.stack([rng.integers(0, n_users, 90), rng.integers(0, n_items, 90)], 1)
  test = np.stack([np.arange(n_users), rng.integers(0, n_items, n_users)], 1)
  ev = full_ranking.Evaluator(m, train, test, ks=(5,), user_chunk=3, item_chunk=64)
  got = ev.top_k()
  scores = m.score_items(tf.constant(np.arange(n_users), tf.int32)).numpy()
  known = [train[train[:, 0] == u, 1] for u in range(n_users)]
  np.testing.assert_array_equal(got, metrics_lib.top_k_excluding(scores, known, 5))


@pytest.mark.parametrize("kind", ["mf", "maml"])
def test_served_recommendations_on_a_large_catalogue_are_the_plain_top_k(kind):
  # 400 items > 2 x 5 blocks of 16: `recommend` takes its top k by blocks;
  # MAML's scores come by item chunks, of a width unknown in the graph.
  from maml_tf.data.dataset import Dataset
  from maml_tf.export import signatures
  from maml_tf.models import mf
  from maml_tf.models.maml import MAML
  rng = np.random.default_rng(13)
  n_users, n_items = 6, 400
  if kind == "mf":
    m = mf.MF(n_users, n_items, embed_dim=3, seed=0)
    m.item_embeddings.assign(rng.normal(size=(n_items, 3)).astype(np.float32))
  else:
    m = MAML(n_users, n_items, feature_dim=6, embed_dim=4, hidden_dim=8,
             attention="scaled", mode="faithful", seed=0)
    m.set_item_features(rng.normal(size=(n_items, 6)))
    # Spread embeddings: untrained ones give near-equal scores whose order
    # the serving tables' float order may flip.
    m.user_embeddings.assign(rng.normal(size=(n_users, 4)).astype(np.float32))
    m.item_embeddings.assign(rng.normal(size=(n_items, 4)).astype(np.float32))
  train = np.unique(np.stack([rng.integers(0, n_users, 80),
                              rng.integers(0, n_items, 80)], 1), axis=0)
  test = np.stack([np.arange(n_users), np.full(n_users, 399)], 1)
  ds = Dataset(name="tiny", n_users=n_users, n_items=n_items, train=train, test=test)
  graphs = signatures.ServingGraphs(m, ds, topk=5, retrieve_candidates=20,
                                    item_chunk=64)
  assert full_ranking.blocked(n_items, 5)
  out = graphs.recommend(tf.constant(np.arange(n_users), tf.int64))
  m.prepare_scoring()
  scores = m.score_items(tf.constant(np.arange(n_users), tf.int32)).numpy()
  known = [train[train[:, 0] == u, 1] for u in range(n_users)]
  want = metrics_lib.top_k_excluding(scores, known, 5)
  np.testing.assert_array_equal(out["item_ids"].numpy(), want)
  np.testing.assert_allclose(out["scores"].numpy(),
                             np.take_along_axis(scores, want, 1), rtol=1e-5, atol=1e-6)
