"""How a full-ranking evaluation cuts the users x catalogue work into chunks.

Dot-product models keep the one-product chunks they always had; a model
with per-pair activations (MAML's attention) gets item chunks whose
[users, items, pair_width] block stays within the cache budget, and ranks
exactly as with one catalogue-wide chunk.
"""

import numpy as np
import pytest

from tests import helpers
from maml_tf.evaluate import full_ranking


def test_dot_product_chunks_are_unchanged():
  # One item chunk up to 8,192 items, users up to the 2^25-float budget.
  assert full_ranking.default_chunks(2406, 64) == (217, 2406)
  assert full_ranking.default_chunks(100_000, 64) == (68, 7693)  # 13 item chunks
  assert full_ranking.default_chunks(2406, 64, pair_width=0) == (217, 2406)


@pytest.mark.parametrize("n_items,width", [(2406, 320), (23_033, 320),
                                           (100_000, 320), (500, 40), (7, 20)])
def test_per_pair_chunks_fit_the_cache_budget_and_cover_the_catalogue(
    n_items, width):
  cache = full_ranking.PAIR_CACHE_FLOATS
  users, items = full_ranking.default_chunks(n_items, width, pair_width=width)
  plain_users, _ = full_ranking.default_chunks(n_items, width)
  assert users == plain_users  # the user chunk is the budget's, as before
  n_chunks = -(-n_items // items)
  assert items <= n_items and n_chunks * items - n_items < n_chunks  # balanced
  assert users * items * width <= cache or items <= 8 or n_chunks == 1


def test_office_sized_maml_chunks():
  # MAML at Office's size (K = 64, so 5K = 320): 43 users x 2,406 items held
  # 33M floats (132 MB) of activations in one chunk; now 32 item chunks of
  # 76, 1M floats (4 MB) each.
  users, items = full_ranking.default_chunks(2406, 320, pair_width=320)
  assert (users, items) == (43, 76)
  assert users * items * 320 <= full_ranking.PAIR_CACHE_FLOATS


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
