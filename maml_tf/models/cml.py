"""CML, Collaborative Metric Learning (Hsieh et al., WWW 2017), as the MAML
release trains it: MAML without item features and without attention.

d(u, i) = ||p_u - q_i||^2, the WARP-weighted hinge against the closest of
the W sampled negatives (summed over the batch), the covariance loss
lambda_c (sum C - trace C) on [Q; P], Adam, every row of P and Q clipped to
the unit ball after each step. `MAML(attention="none", feature_dim=0)`
computes the same thing (tests/test_models.py checks they agree); CML is
its own class so that it does not carry MAML's networks.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from maml_tf.models import metric_losses as losses
from maml_tf.models import base
from maml_tf.models.maml import plain_sq_distances


@keras.saving.register_keras_serializable(package="maml_tf")
class CML(base.RankingModel):
  """Users and items in one metric space; the plain squared distance."""

  NAME = "cml"
  BATCH_SUM_TERMS = ("embedding_loss",)
  SEARCH_SPACE = {
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      "margin": ("float", 0.5, 2.5, "linear"),
      "cov_loss_weight": ("float", 0.0, 10.0, "linear"),
      "num_neg": ("int", 2, 10),
      "embed_dim": ("choice", [32, 64, 128]),
  }

  def __init__(self, n_users, n_items, embed_dim=64, margin=1.6,
               use_rank_weight=True, use_cov_loss=True, cov_loss_weight=5.0,
               clip_norm=1.0, seed=None, **kwargs):
    super().__init__(n_users, n_items, embed_dim=embed_dim, clip_norm=clip_norm,
                     seed=seed, **kwargs)
    base.check_positive("margin", margin)
    self.margin = float(margin)
    self.use_rank_weight, self.use_cov_loss = bool(use_rank_weight), bool(use_cov_loss)
    self.cov_loss_weight = float(cov_loss_weight)
    self.finish_init()

  @property
  def loss_names(self):
    return ["loss", "embedding_loss"] + (["cov_loss"] if self.use_cov_loss else [])

  def pair_distances(self, users, items):
    p = tf.gather(self.user_embeddings, users)[:, None, :]
    q = tf.gather(self.item_embeddings, items)
    return tf.reduce_sum(tf.square(p - q), -1)

  def loss_terms(self, users, items, training=False):
    d = self.pair_distances(users, items)
    terms = {"embedding_loss": losses.embedding_loss(
        d[:, 0], d[:, 1:], self.margin, self.n_items, self.use_rank_weight)}
    if self.use_cov_loss:
      terms["cov_loss"] = losses.covariance_loss(
          self.item_embeddings, self.user_embeddings, self.cov_loss_weight)
    terms["loss"] = tf.add_n(list(terms.values()))
    return terms

  def score_items(self, users, item_chunk=None):
    p = tf.gather(self.user_embeddings, users)
    return -plain_sq_distances(p, tf.convert_to_tensor(self.item_embeddings))

  def score_pairs(self, users, items, explain=False):
    if explain:
      return self.serve_pairs(self.serving_tables(), users, items)
    return -self.pair_distances(users, items)

  def serve_items(self, tables, users, item_chunk=None):
    return -plain_sq_distances(tf.gather(tables["users"], users), tables["items"])

  def serve_pairs(self, tables, users, items):
    """(-||p - q||^2, all-ones "attention" [.., K]: no attention)."""
    p = tf.gather(tables["users"], users)
    if items.shape.rank == 2:
      p = p[:, None, :]
    d = tf.reduce_sum(tf.square(p - tf.gather(tables["items"], items)), -1)
    return -d, tf.ones(tf.concat([tf.shape(d), [self.embed_dim]], 0))

  def retrieval_space(self, tables):
    return "euclidean", tables["items"]

  def get_config(self):
    config = self.base_config()
    config.update(margin=self.margin, use_rank_weight=self.use_rank_weight,
                  use_cov_loss=self.use_cov_loss,
                  cov_loss_weight=self.cov_loss_weight, clip_norm=self.clip_norm)
    return config

  @classmethod
  def from_run_config(cls, config, dataset):
    return cls(dataset.n_users, dataset.n_items, embed_dim=config.embed_dim,
               margin=config.margin, use_rank_weight=config.use_rank_weight,
               use_cov_loss=config.use_cov_loss,
               cov_loss_weight=config.cov_loss_weight,
               clip_norm=config.clip_norm, seed=config.seed, name="cml")
