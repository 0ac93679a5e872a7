"""How full ranking, two-stage re-ranking and the exported signatures cut
the users x catalogue work into chunks.

Dot-product models keep the one-product chunks they always had; a model
with per-pair activations (MAML's attention) gets chunks whose
[users, items, pair_width] block stays near the cache budget, and ranks
exactly as with one catalogue-wide chunk.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from maml_tf.evaluate import full_ranking
from maml_tf.models.base import PAIR_CACHE_FLOATS


def test_dot_product_chunks_are_unchanged():
  # One item chunk up to 8,192 items, users up to the 2^25-float budget.
  assert full_ranking.default_chunks(2406, 64) == (217, 2406)
  assert full_ranking.default_chunks(100_000, 64) == (68, 7693)  # 13 item chunks
  assert full_ranking.default_chunks(2406, 64, pair_width=0) == (217, 2406)


@pytest.mark.parametrize("n_items,width", [(2406, 320), (23_033, 320),
                                           (100_000, 320), (500, 40), (7, 20)])
def test_per_pair_chunks_fit_the_cache_budget_and_cover_the_catalogue(
    n_items, width):
  cache = PAIR_CACHE_FLOATS
  users, items = full_ranking.default_chunks(n_items, width, pair_width=width)
  plain_users, _ = full_ranking.default_chunks(n_items, width)
  assert users == plain_users  # the user chunk is the budget's, as before
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
