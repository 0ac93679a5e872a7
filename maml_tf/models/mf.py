"""BPR-MF: matrix factorisation trained with the BPR loss (Rendle et al.,
UAI 2009), the plain collaborative-filtering baseline and MARIO's first
backbone.

r_ui = <p_u, q_i> over unconstrained tables P [n_users, d], Q [n_items, d].
For a batch of B (user, positive i, sampled negative j) triples (one
negative per positive: the sampler's column 1):

  bpr_loss = mean_b -ln sigmoid(r_ui - r_uj)           (computed as softplus)
  l2_loss  = lambda * sum_b (||p_u||^2 + ||q_i||^2 + ||q_j||^2) / (2 B)

`l2_loss` is the habit of LightGCN's and LATTICE's code ("reg_loss" =
||.||^2 / 2 over the batch's rows divided by the batch size, times the
weight decay); lambda is `--l2_reg`. Both terms are means over the batch
(not in BATCH_SUM_TERMS), so the learning rate does not depend on B.

Initialisation (`init_stddev=None`, the default): each table Xavier-normal
(Glorot & Bengio, AISTATS 2010) on its own shape, rows ~ N(0, 2 / (rows + d)):
torch's `xavier_normal_` on an [rows, d] embedding weight (fan_in = d,
fan_out = rows), which is RecBole's BPR initialisation; the LightGCN authors'
TF code draws Xavier (uniform, the same variance) too. On Office's 8:1:1
split that is std 0.020 for the users and 0.028 for the items. A float
`init_stddev` draws both tables N(0, init_stddev^2) instead; `INIT_STDDEV`
(0.1, the LightGCN authors' PyTorch code) is what this model drew before and
what LightGCN, MARIO and LATTICE still pass. Measured
(docs/recbole_comparison.md, RecBole 1.2.1's BPR on one split): with 0.1,
BPR-MF ends ~30% below RecBole's BPR on test Recall@20 and NDCG@20 (3
seeds); with Xavier it is within a few percent. There is no effective
regulariser (l2_reg 1e-4 on the batch rows is tiny) and Adam moves a row
by ~lr a step, so the random part of a large initial row stays in the
scores of users and items with few interactions; 0.02 / 0.05 / 0.1 give
test Recall@20 0.087 / 0.081 / 0.066 there.

Our choices, written down: Adam, as every model of this package
(train.build_model).

The helpers `bpr_loss`, `batch_l2` and `dot_scores` are shared with the
LightGCN and MARIO models, which import them from here.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from maml_tf.models import base

INIT_STDDEV = 0.1  # N(0, 0.1^2): the LightGCN authors' PyTorch code


def bpr_loss(pos_scores, neg_scores):
  """mean of -ln sigmoid(pos - neg) = mean softplus(neg - pos)."""
  return tf.reduce_mean(tf.nn.softplus(neg_scores - pos_scores))


def batch_l2(*rows):
  """sum over the given [B, d] row blocks of ||row||^2 / (2 B)."""
  batch = tf.cast(tf.shape(rows[0])[0], rows[0].dtype)
  total = tf.add_n([tf.reduce_sum(tf.square(r)) for r in rows])
  return total / (2.0 * batch)


def dot_scores(users, items):
  """<p_u, q_i> for every pair: users [U, d], items [n, d] -> [U, n]."""
  return tf.matmul(users, items, transpose_b=True)


def xavier_stddev(rows, embed_dim):
  """sqrt(2 / (rows + d)): the Xavier-normal stddev of a [rows, d] table."""
  return math.sqrt(2.0 / (int(rows) + int(embed_dim)))


def check_l2_reg(l2_reg):
  if not (l2_reg >= 0):
    raise ValueError(f"`l2_reg` must be >= 0. Received: l2_reg={l2_reg!r}")
  return float(l2_reg)


@keras.saving.register_keras_serializable(package="maml_tf")
class MF(base.RankingModel):
  """BPR-MF: dot-product scores over unconstrained user and item tables.

  A subclass whose scores come from tables derived from P and Q (LightGCN's
  propagation) overrides `final_tables()`; the loss, scoring and serving
  here then use those, while the L2 stays on the rows of P and Q ("ego").
  """

  NAME = "mf"
  BATCH_SUM_TERMS = ()
  SEARCH_SPACE = {
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      "l2_reg": ("float", 1e-6, 1e-2, "log"),
      "embed_dim": ("choice", [32, 64, 128]),
  }

  def __init__(self, n_users, n_items, embed_dim=64, l2_reg=1e-4,
               init_stddev=None, seed=None, **kwargs):
    """`init_stddev`: None for Xavier-normal per table (the module
    docstring), or a float > 0 for N(0, init_stddev^2) in both tables."""
    if init_stddev is not None:
      base.check_positive("init_stddev", init_stddev)
      user_std = item_std = float(init_stddev)
    else:
      user_std = xavier_stddev(n_users, embed_dim)
      item_std = xavier_stddev(n_items, embed_dim)
    super().__init__(n_users, n_items, embed_dim=embed_dim, clip_norm=None,
                     init_stddev=user_std, seed=seed, **kwargs)
    if item_std != user_std:
      # Both tables were drawn with the users' stddev from one seeded stream;
      # rescaling the item draw gives N(0, item_std^2) from the same stream.
      self.item_embeddings.assign(self.item_embeddings * (item_std / user_std))
    self.l2_reg = check_l2_reg(l2_reg)
    self.init_stddev = None if init_stddev is None else float(init_stddev)
    self.finish_init()

  @property
  def loss_names(self):
    return ["loss", "bpr_loss", "l2_loss"]

  # ------------------------------------------------------------ tables
  def final_tables(self):
    """(users [n_users, d], items [n_items, d]) the scores are made of."""
    return (tf.convert_to_tensor(self.user_embeddings),
            tf.convert_to_tensor(self.item_embeddings))

  def with_scoring_tables(self, use):
    """use(the (users, items) tables `score_items` reads): `final_tables()`
    here; a subclass may read a cache that `prepare_scoring` refreshes."""
    return use(self.final_tables())

  def item_representation(self):
    return self.final_tables()[1]

  # ------------------------------------------------------------ loss
  def loss_terms(self, users, items, training=False):
    """BPR on column 0 (positive) against column 1 (the one negative)."""
    users_t, items_t = self.final_tables()
    u = tf.gather(users_t, users)
    pos, neg = items[:, 0], items[:, 1]
    r_pos = tf.reduce_sum(u * tf.gather(items_t, pos), -1)
    r_neg = tf.reduce_sum(u * tf.gather(items_t, neg), -1)
    bpr = bpr_loss(r_pos, r_neg)
    l2 = self.l2_reg * batch_l2(tf.gather(self.user_embeddings, users),
                                tf.gather(self.item_embeddings, pos),
                                tf.gather(self.item_embeddings, neg))
    return {"loss": bpr + l2, "bpr_loss": bpr, "l2_loss": l2}

  # ------------------------------------------------------------ scoring
  def score_items(self, users, item_chunk=None):
    """<u, i> of users [U] against every item: [U, n_items] (one matmul)."""
    return self.with_scoring_tables(
        lambda tables: dot_scores(tf.gather(tables[0], users), tables[1]))

  def score_pairs(self, users, items, explain=False):
    users_t, items_t = self.final_tables()
    tables = {"users": users_t, "items": items_t}
    scores, explanation = self.serve_pairs(tables, users, items)
    return (scores, explanation) if explain else scores

  # ------------------------------------------------------------ serving
  def serving_tables(self):
    users_t, items_t = self.final_tables()
    return {"users": users_t, "items": items_t}

  def serve_items(self, tables, users, item_chunk=None):
    return dot_scores(tf.gather(tables["users"], users), tables["items"])

  def serve_pairs(self, tables, users, items):
    """(<u, i> [B] or [B, N], None: no explanation)."""
    p = tf.gather(tables["users"], users)
    if items.shape.rank == 2:
      p = p[:, None, :]
    return tf.reduce_sum(p * tf.gather(tables["items"], items), -1), None

  def retrieval_space(self, tables):
    return "dot", tables["items"]

  def describe(self):
    out = super().describe()
    out.update(l2_reg=self.l2_reg)
    return out

  def get_config(self):
    config = self.base_config()
    config.update(l2_reg=self.l2_reg, init_stddev=self.init_stddev)
    return config

  @classmethod
  def from_run_config(cls, config, dataset):
    return cls(dataset.n_users, dataset.n_items, embed_dim=config.embed_dim,
               l2_reg=config.l2_reg, seed=config.seed, name="mf")
