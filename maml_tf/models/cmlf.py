"""CMLF, Collaborative Metric Learning with item features (Hsieh, Yang, Cui,
Lin, Belongie, Estrin; WWW 2017, section 3.4): CML's loss plus a feature
loss that pulls each item's vector towards a learned function of its
features. The MAML paper's rows CML_text, CML_image, CML_all.

  L = L_m + lambda_f L_f + lambda_c L_c                        (eq. 8)

- L_m: CML's WARP-weighted hinge against the closest of the W sampled
  negatives, summed over the batch (eq. 4-5), and L_c the covariance loss
  (eq. 7): exactly `cml.CML`'s terms, inherited unchanged.
- L_f = sum over all items j of ||f(x_j) - v_j||^2 (eq. 6), lambda_f =
  `--feature_l2_reg`; the gradient reaches both the item vectors v_j (the
  table Q) and the network f, which trains jointly.
- f, "a multi-layer perceptron with dropout" (the paper), built as the
  authors' released code builds it: one hidden ReLU layer of
  `--hidden_layer_dim` units, dropout (`--dropout`), a linear layer to d, the
  output multiplied by `--feature_scaling` and each row clipped to norm
  `--clip_norm`:
    f(x) = clip( s * (W_2 drop(ReLU(W_1 x + b_1)) + b_2) ).
  x_j is the concatenation of the modalities the dataset gives, in order
  (`--modalities`: text, meta or both).
- As the authors' code, Q starts at f(x) (`set_item_features`), P and Q are
  N(0, 1/d) otherwise, and every row of P and Q is clipped to the unit ball
  after each step (CML's constraint).

Why not an alias of `--model=maml`: `--attention=none` makes MAML's distance
CML's, but in faithful mode (the release) MAML's fusion network never
trains (F stays the random initial projection), which is not L_f of a
trained f; in paper mode (`--mode=paper --paper_trains=fusion`) it trains,
but it is MAML's fusion network (three hidden layers with l2-normalised
inputs), not CML's one-hidden-layer MLP. tests/test_cmlf.py checks that the
terms the models share agree and that these networks differ.

Our choices, written down:
- Dropout is active while training. The paper says the MLP uses dropout;
  the authors' released code passes no `training` flag to
  `tf.layers.dropout`, so there it is inert (`--dropout=0` reproduces that).
- One Adam for the tables and the MLP on the whole loss. The authors' code
  runs two AdaGrad optimisers (the MLP on L_f / |I|); both AdaGrad and Adam
  are nearly invariant to such a constant scaling of the gradient.
- Defaults are MAML's Office settings (office.flags), the settings the MAML
  paper's CML rows were compared under.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from maml_tf.models import layers as layers_lib
from maml_tf.models import base
from maml_tf.models import cml


@keras.saving.register_keras_serializable(package="maml_tf")
class FeatureMLP(keras.layers.Layer):
  """x -> clip(s * (W_2 drop(ReLU(W_1 x + b_1)) + b_2)), rows to norm c."""

  def __init__(self, hidden_dim, embed_dim, dropout=0.2, scaling=1.0,
               clip_norm=1.0, seed=None, **kwargs):
    super().__init__(**kwargs)
    base.check_positive("hidden_dim", hidden_dim, integer=True)
    base.check_positive("embed_dim", embed_dim, integer=True)
    if not 0 <= dropout < 1:
      raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
    base.check_positive("scaling", scaling)
    base.check_positive("clip_norm", clip_norm)
    self.hidden_dim, self.embed_dim = int(hidden_dim), int(embed_dim)
    self.dropout, self.scaling = float(dropout), float(scaling)
    self.clip_norm, self.seed = float(clip_norm), seed
    glorot = lambda k: keras.initializers.GlorotUniform(  # noqa: E731
        seed=None if seed is None else seed + k)
    self.hidden = keras.layers.Dense(self.hidden_dim, activation="relu",
                                     kernel_initializer=glorot(1),
                                     bias_initializer="zeros", name="hidden")
    self.out = keras.layers.Dense(self.embed_dim, kernel_initializer=glorot(2),
                                  bias_initializer="zeros", name="out")
    self.seed_generator = keras.random.SeedGenerator(seed)

  def build(self, input_shape):
    self.hidden.build((None, input_shape[-1]))
    self.out.build((None, self.hidden_dim))
    self.built = True

  def call(self, x, training=False):
    h = self.hidden(x)
    if training and self.dropout > 0:
      h = layers_lib.stateless_dropout(h, self.dropout, self.seed_generator)
    return tf.clip_by_norm(self.out(h) * self.scaling, self.clip_norm, axes=[-1])

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.embed_dim,)

  def get_config(self):
    config = super().get_config()
    config.update(hidden_dim=self.hidden_dim, embed_dim=self.embed_dim,
                  dropout=self.dropout, scaling=self.scaling,
                  clip_norm=self.clip_norm, seed=self.seed)
    return config


@keras.saving.register_keras_serializable(package="maml_tf")
class CMLF(cml.CML):
  """CML plus the feature loss to a trained feature MLP; see the module
  docstring. Call `set_item_features(x)` after construction."""

  NAME = "cmlf"
  BATCH_SUM_TERMS = ("embedding_loss",)
  SEARCH_SPACE = dict(cml.CML.SEARCH_SPACE, **{
      "feature_l2_reg": ("float", 0.0, 10.0, "linear"),
      "dropout": ("float", 0.0, 0.5, "linear"),
      "hidden_layer_dim": ("choice", [128, 256, 512]),
  })

  def __init__(self, n_users, n_items, feature_dim, embed_dim=64,
               hidden_dim=256, dropout=0.2, feature_l2_reg=5.0,
               feature_scaling=1.0, margin=1.6, use_rank_weight=True,
               use_cov_loss=True, cov_loss_weight=5.0, clip_norm=1.0,
               seed=None, **kwargs):
    base.check_positive("feature_dim", feature_dim, integer=True)
    if not feature_l2_reg >= 0:
      raise ValueError("`feature_l2_reg` must be >= 0. Received: "
                       f"feature_l2_reg={feature_l2_reg!r}")
    super().__init__(n_users, n_items, embed_dim=embed_dim, margin=margin,
                     use_rank_weight=use_rank_weight, use_cov_loss=use_cov_loss,
                     cov_loss_weight=cov_loss_weight, clip_norm=clip_norm,
                     seed=seed, **kwargs)
    self.feature_dim = int(feature_dim)
    self.feature_l2_reg = float(feature_l2_reg)
    self.item_features = self.add_weight(
        shape=(self.n_items, self.feature_dim), initializer="zeros",
        trainable=False, name="item_features")
    self.feature_mlp = FeatureMLP(hidden_dim, self.embed_dim, dropout=dropout,
                                  scaling=feature_scaling, clip_norm=self.clip_norm,
                                  seed=seed, name="feature_mlp")
    self.feature_mlp.build((None, self.feature_dim))
    self.finish_init()

  @property
  def loss_names(self):
    names = ["loss", "embedding_loss", "feature_loss"]
    return names + (["cov_loss"] if self.use_cov_loss else [])

  def set_item_features(self, features, init_items=True):
    """Stores the [n_items, feature_dim] features; Q = f(x) (the authors'
    initialisation) unless `init_items` is False."""
    x = np.asarray(features, np.float32)
    if x.shape != (self.n_items, self.feature_dim):
      raise ValueError(f"`features` must have shape {(self.n_items, self.feature_dim)}. "
                       f"Received: shape={x.shape}")
    self.item_features.assign(x)
    if init_items:
      self.item_embeddings.assign(self.projected_features(training=False))

  def projected_features(self, training=False):
    """f(x_j) for every item: [n_items, d]."""
    return self.feature_mlp(tf.convert_to_tensor(self.item_features),
                            training=training)

  def loss_terms(self, users, items, training=False):
    """CML's terms (embedding, covariance) plus the feature term L_f."""
    terms = super().loss_terms(users, items, training)
    f = self.projected_features(training=bool(training))
    terms["feature_loss"] = self.feature_l2_reg * tf.reduce_sum(
        tf.square(f - tf.convert_to_tensor(self.item_embeddings)))
    terms["loss"] = tf.add_n([v for k, v in terms.items() if k != "loss"])
    return {name: terms[name] for name in self.loss_names}

  def projector_tensors(self):
    tensors = super().projector_tensors()
    tensors["projected_features"] = self.projected_features(training=False)
    return tensors

  def describe(self):
    out = super().describe()
    out.update(feature_dim=self.feature_dim, feature_l2_reg=self.feature_l2_reg)
    return out

  def get_config(self):
    config = super().get_config()
    mlp = self.feature_mlp
    config.update(feature_dim=self.feature_dim, hidden_dim=mlp.hidden_dim,
                  dropout=mlp.dropout, feature_l2_reg=self.feature_l2_reg,
                  feature_scaling=mlp.scaling)
    return config

  @classmethod
  def from_run_config(cls, config, dataset):
    features = dataset.feature_matrix()
    base.require_content(config, features is not None, cls.NAME,
                         "without features CMLF is CML: use --model=cml")
    model = cls(dataset.n_users, dataset.n_items, feature_dim=features.shape[1],
                embed_dim=config.embed_dim, hidden_dim=config.hidden_layer_dim,
                dropout=config.dropout, feature_l2_reg=config.feature_l2_reg,
                feature_scaling=config.feature_scaling, margin=config.margin,
                use_rank_weight=config.use_rank_weight,
                use_cov_loss=config.use_cov_loss,
                cov_loss_weight=config.cov_loss_weight,
                clip_norm=config.clip_norm, seed=config.seed, name="cmlf")
    model.set_item_features(features)
    return model
