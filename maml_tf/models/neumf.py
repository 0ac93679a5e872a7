"""NeuMF, Neural Matrix Factorization (He, Liao, Zhang, Nie, Hu, Chua;
"Neural Collaborative Filtering", WWW 2017), with its two towers GMF and
MLP.

With F the predictive factors (`--embed_dim`) and L the MLP's hidden layers
(`--neumf_layers`, the paper's 3), each tower has its own embedding tables:

  GMF (eq. 9):   phi_G = p_u^G * q_i^G                          (width F)
  MLP (eq. 10):  z_0 = [p_u^M; q_i^M], p^M and q^M of width M = F 2^(L-1),
                 z_l = ReLU(W_l z_{l-1} + b_l), widths halving M, M/2, .., F
                 phi_M = z_L                                    (width F)
  NeuMF (eq. 11/12): logit_ui = h . [phi_G; phi_M] + b,  y_ui = sigmoid(logit)

(the authors' code: `--layers=[64,32,16,8]` with 8 factors is L = 3, an
embedding of 32 a side). `--neumf_towers` picks the tower(s): `gmf` and `mlp`
alone are the paper's GMF and MLP models (logit = h . phi + b), `both` is
NeuMF.

Loss (eq. 7): binary cross-entropy over each positive and the batch's W
sampled negatives (the sampler's columns 1..W, `--num_neg`; the paper's 4),
the mean over the B (1 + W) instances (the authors' code fits one instance
a row with Keras' mean loss):

  bce_loss = [sum_b softplus(-logit_{u,pos}) + sum_{b,j} softplus(logit_{u,j})]
             / (B (1 + W))
  l2_loss  = lambda * sum over the instances (u, i) of (||rows of u||^2 +
             ||rows of i||^2) / 2, / (B (1 + W))

the rows being the embedding rows of every tower (lambda is `--l2_reg`; the
authors' default regularisation is 0: flags/office_neumf.flags sets 0).

Pre-training (section 3.4.1): train a GMF run and an MLP run first (the same
data, `--embed_dim` and `--neumf_layers`), then `--neumf_towers=both
--neumf_pretrain=GMF_RUN,MLP_RUN` (each a workdir, whose selected round is
read, or a checkpoint prefix) initialises NeuMF from them, as the authors'
`load_pretrain_model`: the GMF tables from the GMF run; the MLP tables and
hidden layers from the MLP run; h = [alpha h_G; (1 - alpha) h_M] and
b = alpha b_G + (1 - alpha) b_M, alpha = `--neumf_alpha` (the paper's 0.5).

Initialisation, as the authors' code: tables ~ N(0, 0.01^2), hidden layers
Glorot-uniform with zero biases, h LeCun-uniform with b = 0.

Our choices, written down:
- Optimiser: Adam for every stage, the project's one optimiser
  (train.build_model). The paper trains the pre-trained NeuMF with plain SGD
  (Adam's moments are not carried over from the towers' runs); the authors'
  released code and README use Adam there too. A fresh Adam on loaded
  weights is what `--init_from` also does.
- Scores (full ranking, `score`, `retrieve`) are the logit, a monotone map of
  y_ui that does not saturate into ties.
- Full ranking: the MLP's first layer is split, W_1 [p; q] = W_u p + W_i q, so
  the user half is computed once per user and the item half once per item;
  each (user, item) pair then costs the ReLU and the layers after the first
  (`base.map_item_chunks` over the catalogue). Training splits it too
  (`pair_logits`): the user half once per batch row, the item half per item
  row, or for the whole catalogue once when the batch has more item rows.
- Two-stage retrieval (`retrieve`): the first stage is the GMF tower's own
  term of the logit, a dot product: query h_G * p_u^G, items q_i^G (exact for
  `gmf`); the candidates are then re-ranked by the full logit. With
  `--neumf_towers=mlp` there is no dot-product part: the first stage is the
  surrogate <p_u^M, q_i^M> of the MLP tables, with no guarantee on recall.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from maml_tf.models import layers as layers_lib
from maml_tf.errors import UsageError
from maml_tf.models import base
from maml_tf.models import mf
from maml_tf.models.base import map_item_chunks

TOWERS = ("both", "gmf", "mlp")
INIT_STDDEV = 0.01  # the authors' init_normal


def mlp_widths(factors, layers):
  """The MLP's table width then its hidden widths: (M, [M, M/2, .., F])."""
  widths = [int(factors) * 2 ** (int(layers) - 1 - k) for k in range(int(layers))]
  return widths[0], widths


def check_towers(towers):
  if towers not in TOWERS:
    raise ValueError(f"`towers` must be one of {', '.join(TOWERS)}. "
                     f"Received: towers={towers!r}")
  return towers


@keras.saving.register_keras_serializable(package="maml_tf")
class NeuMF(base.RankingModel):
  """GMF, MLP or both towers fused into one logit; see the module docstring.

  The base tables (`user_embeddings`, `item_embeddings`) are the GMF tower's
  when it has one, else the MLP's; with both towers the MLP's are
  `mlp_user_table` and `mlp_item_table`.
  """

  NAME = "neumf"
  BATCH_SUM_TERMS = ()
  SEARCH_SPACE = {
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      "l2_reg": ("float", 1e-7, 1e-3, "log"),
      "embed_dim": ("choice", [8, 16, 32, 64]),
      "neumf_layers": ("int", 1, 4),
      "num_neg": ("int", 1, 10),
  }

  def __init__(self, n_users, n_items, embed_dim=64, towers="both",
               mlp_layers=3, l2_reg=0.0, alpha=0.5, init_stddev=INIT_STDDEV,
               seed=None, **kwargs):
    towers = check_towers(towers)
    if isinstance(mlp_layers, bool) or int(mlp_layers) != mlp_layers or mlp_layers < 1:
      raise ValueError("`mlp_layers` must be an integer >= 1. Received: "
                       f"mlp_layers={mlp_layers!r}")
    if not 0 <= alpha <= 1:
      raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={alpha!r}")
    base.check_positive("embed_dim", embed_dim, integer=True)
    self.factors, self.towers = int(embed_dim), towers
    self.mlp_layer_count = int(mlp_layers)
    self.mlp_width, self.hidden_widths = mlp_widths(self.factors, self.mlp_layer_count)
    first = self.factors if towers != "mlp" else self.mlp_width
    super().__init__(n_users, n_items, embed_dim=first, clip_norm=None,
                     init_stddev=init_stddev, seed=seed, **kwargs)
    self.l2_reg, self.alpha = mf.check_l2_reg(l2_reg), float(alpha)
    self.init_stddev = float(init_stddev)
    self.mlp_user_table = self.mlp_item_table = None
    if towers == "both":
      self.mlp_user_table = layers_lib.TableEmbedding(
          self.n_users, self.mlp_width, stddev=self.init_stddev,
          seed=self.table_seeds, name="mlp_user_embeddings")
      self.mlp_item_table = layers_lib.TableEmbedding(
          self.n_items, self.mlp_width, stddev=self.init_stddev,
          seed=self.table_seeds, name="mlp_item_embeddings")
      self.mlp_user_table.build()
      self.mlp_item_table.build()
    self.mlp_layers = []
    if self.has_mlp:
      width = 2 * self.mlp_width
      for k, units in enumerate(self.hidden_widths):
        layer = keras.layers.Dense(
            units, activation="relu",
            kernel_initializer=keras.initializers.GlorotUniform(
                seed=None if seed is None else seed + 1 + k),
            bias_initializer="zeros", name=f"mlp_layer_{k + 1}")
        layer.build((None, width))
        self.mlp_layers.append(layer)
        width = units
    out_width = self.factors * (2 if towers == "both" else 1)
    self.output_kernel = self.add_weight(
        shape=(out_width,), name="output_kernel",
        initializer=keras.initializers.LecunUniform(
            seed=None if seed is None else seed + 100))
    self.output_bias = self.add_weight(shape=(), initializer="zeros",
                                       name="output_bias")
    self.finish_init()

  # ------------------------------------------------------------ setup
  @property
  def has_gmf(self):
    return self.towers in ("both", "gmf")

  @property
  def has_mlp(self):
    return self.towers in ("both", "mlp")

  @property
  def loss_names(self):
    return ["loss", "bce_loss", "l2_loss"]

  @property
  def score_width(self):
    return sum(self.hidden_widths) if self.has_mlp else self.factors

  @property
  def pair_width(self):
    # The MLP tower's hidden layers, per pair (GMF alone: one product).
    return self.score_width if self.has_mlp else 0

  def gmf_tables(self):
    """(P^G, Q^G) variables of the GMF tower (None without one)."""
    if not self.has_gmf:
      return None
    return self.user_embeddings, self.item_embeddings

  def mlp_tables(self):
    """(P^M, Q^M) variables of the MLP tower (None without one)."""
    if not self.has_mlp:
      return None
    if self.towers == "mlp":
      return self.user_embeddings, self.item_embeddings
    return self.mlp_user_table.embeddings, self.mlp_item_table.embeddings

  def table_variables(self):
    tables = [self.user_embeddings, self.item_embeddings]
    if self.towers == "both":
      tables += list(self.mlp_tables())
    return tables

  def output_parts(self):
    """(h_G or None, h_M or None): the output kernel's part per tower."""
    h = tf.convert_to_tensor(self.output_kernel)
    f = self.factors
    if self.towers == "both":
      return h[:f], h[f:]
    return (h, None) if self.towers == "gmf" else (None, h)

  # ------------------------------------------------------------ forward
  def _first_layer(self):
    """(W_u [M, M], W_i [M, M], b_1): the first layer split by input half."""
    layer = self.mlp_layers[0]
    kernel = tf.convert_to_tensor(layer.kernel)
    return kernel[:self.mlp_width], kernel[self.mlp_width:], layer.bias

  def _mlp_after_first(self, pre):
    """phi_M from the first layer's pre-activation [..., M]."""
    z = tf.nn.relu(pre)
    for layer in self.mlp_layers[1:]:
      z = layer(z)
    return z

  def user_half(self, p_mlp):
    """W_u p + b_1 of the MLP's user rows [..., M]."""
    w_u, _, b1 = self._first_layer()
    return tf.tensordot(p_mlp, w_u, [[-1], [0]]) + b1

  def item_half(self, q_mlp):
    """W_i q of the MLP's item rows [..., M]."""
    _, w_i, _ = self._first_layer()
    return tf.tensordot(q_mlp, w_i, [[-1], [0]])

  def pair_logits(self, users, items):
    """logit of users [B] against their own items [B, N] (or [B]).

    The first MLP layer is split as in full ranking, W_1 [p; q] = W_u p +
    W_i q (the same sum, added in another order): the user half once per
    row, not once per (row, item); and when the batch holds more item rows
    than the catalogue, the item half of every item once, then gathered (on
    Office at B = 5,000 and 4 negatives a training step ran ~3x faster, one
    thread: 970 -> 320-390 ms, against the concatenated [B, 1 + W, 2M]
    input; at B = 256, 35-49 -> 26-31 ms).
    """
    h_g, h_m = self.output_parts()
    expand = (lambda t: t[:, None, :]) if items.shape.rank == 2 else (lambda t: t)
    logit = tf.convert_to_tensor(self.output_bias)
    if self.has_gmf:
      p_g, q_g = self.gmf_tables()
      phi = expand(tf.gather(p_g, users)) * tf.gather(q_g, items)
      logit = logit + tf.tensordot(phi, h_g, [[-1], [0]])
    if self.has_mlp:
      p_m, q_m = self.mlp_tables()
      if items.shape.num_elements() is not None and (
          items.shape.num_elements() >= self.n_items):
        item_half = tf.gather(self.item_half(tf.convert_to_tensor(q_m)), items)
      else:
        item_half = self.item_half(tf.gather(q_m, items))
      user_half = expand(self.user_half(tf.gather(p_m, users)))
      z = self._mlp_after_first(user_half + item_half)
      logit = logit + tf.tensordot(z, h_m, [[-1], [0]])
    return logit

  # ------------------------------------------------------------ loss
  def loss_terms(self, users, items, training=False):
    """Binary cross-entropy of column 0 (label 1) and columns 1.. (label 0)."""
    logits = self.pair_logits(users, items)
    n = tf.cast(tf.size(logits), logits.dtype)
    bce = (tf.reduce_sum(tf.nn.softplus(-logits[:, 0])) +
           tf.reduce_sum(tf.nn.softplus(logits[:, 1:]))) / n
    per_row = tf.cast(tf.shape(items)[1], logits.dtype)
    squares = []
    for tables in (self.gmf_tables(), self.mlp_tables()):
      if tables is None:
        continue
      squares.append(per_row * tf.reduce_sum(tf.square(tf.gather(tables[0], users))))
      squares.append(tf.reduce_sum(tf.square(tf.gather(tables[1], items))))
    l2 = self.l2_reg * tf.add_n(squares) / (2.0 * n)
    return {"loss": bce + l2, "bce_loss": bce, "l2_loss": l2}

  # ------------------------------------------------------------ scoring
  def serving_tables(self):
    tables = {}
    h_g, _ = self.output_parts()
    if self.has_gmf:
      p_g, q_g = self.gmf_tables()
      tables["gmf_users"] = tf.convert_to_tensor(p_g) * h_g
      tables["gmf_items"] = tf.convert_to_tensor(q_g)
    if self.has_mlp:
      p_m, q_m = self.mlp_tables()
      tables["mlp_user_half"] = self.user_half(tf.convert_to_tensor(p_m))
      tables["mlp_item_half"] = self.item_half(tf.convert_to_tensor(q_m))
      if not self.has_gmf:  # the retrieval surrogate's vectors
        tables["mlp_users"] = tf.convert_to_tensor(p_m)
        tables["mlp_items"] = tf.convert_to_tensor(q_m)
    return tables

  def _ranking(self, user_gmf, user_half, item_gmf, item_half, item_chunk):
    """[U, n_items] logits from the users' and the items' precomputed parts."""
    _, h_m = self.output_parts()
    scores = None
    if user_half is not None:
      def block(args):
        (chunk,) = args
        z = self._mlp_after_first(user_half[:, None, :] + chunk[None])
        return tf.tensordot(z, h_m, [[-1], [0]])
      scores = map_item_chunks(block, (item_half,), self.n_items, item_chunk)
    if user_gmf is not None:
      gmf = mf.dot_scores(user_gmf, item_gmf)
      scores = gmf if scores is None else scores + gmf
    return scores + tf.convert_to_tensor(self.output_bias)

  def score_items(self, users, item_chunk=None):
    """Logits of users [U] against every item: [U, n_items]."""
    h_g, _ = self.output_parts()
    user_gmf = item_gmf = user_half = item_half = None
    if self.has_gmf:
      p_g, q_g = self.gmf_tables()
      user_gmf = tf.gather(p_g, users) * h_g
      item_gmf = tf.convert_to_tensor(q_g)
    if self.has_mlp:
      p_m, q_m = self.mlp_tables()
      user_half = self.user_half(tf.gather(p_m, users))
      item_half = self.item_half(tf.convert_to_tensor(q_m))
    return self._ranking(user_gmf, user_half, item_gmf, item_half, item_chunk)

  def serve_items(self, tables, users, item_chunk=None):
    get = lambda name: tables.get(name)  # noqa: E731
    user_gmf = None if get("gmf_users") is None else tf.gather(tables["gmf_users"], users)
    user_half = (None if get("mlp_user_half") is None
                 else tf.gather(tables["mlp_user_half"], users))
    return self._ranking(user_gmf, user_half, get("gmf_items"),
                         get("mlp_item_half"), item_chunk)

  def serve_pairs(self, tables, users, items):
    """(logits [B] or [B, N], None: no explanation), from the split parts."""
    _, h_m = self.output_parts()
    expand = (lambda t: t[:, None, :]) if items.shape.rank == 2 else (lambda t: t)
    logit = tf.convert_to_tensor(self.output_bias)
    if self.has_gmf:
      logit = logit + tf.reduce_sum(
          expand(tf.gather(tables["gmf_users"], users)) *
          tf.gather(tables["gmf_items"], items), -1)
    if self.has_mlp:
      z = self._mlp_after_first(expand(tf.gather(tables["mlp_user_half"], users)) +
                                tf.gather(tables["mlp_item_half"], items))
      logit = logit + tf.tensordot(z, h_m, [[-1], [0]])
    return logit, None

  def score_pairs(self, users, items, explain=False):
    scores = self.pair_logits(users, items)
    return (scores, None) if explain else scores

  def serve_queries(self, tables, users):
    name = "gmf_users" if self.has_gmf else "mlp_users"
    return tf.gather(tables[name], users)

  def retrieval_space(self, tables):
    """The GMF tower's term (h_G * p^G) . q^G; the MLP tables' dot product
    as a surrogate without a GMF tower."""
    return "dot", tables["gmf_items" if self.has_gmf else "mlp_items"]

  def item_representation(self):
    return tf.convert_to_tensor(self.item_embeddings)

  def projector_tensors(self):
    tensors = {"item_embeddings": self.item_embeddings}
    if self.towers == "both":
      tensors["mlp_item_embeddings"] = self.mlp_item_table.embeddings
    return tensors

  # ------------------------------------------------------------ pre-training
  def load_towers(self, gmf, mlp):
    """Initialises this `both` model from a trained `gmf` and `mlp` model
    (section 3.4.1): tables and hidden layers copied, h = [alpha h_G;
    (1 - alpha) h_M], b = alpha b_G + (1 - alpha) b_M."""
    if self.towers != "both":
      raise ValueError("`towers` must be both to load pre-trained towers. "
                       f"Received: towers={self.towers!r}")
    for name, other, kind in (("gmf", gmf, "gmf"), ("mlp", mlp, "mlp")):
      if not isinstance(other, NeuMF) or other.towers != kind:
        raise ValueError(f"`{name}` must be a NeuMF with towers={kind}. "
                         f"Received: {getattr(other, 'towers', type(other).__name__)!r}")
      shape = (other.n_users, other.n_items, other.factors, other.mlp_layer_count)
      want = (self.n_users, self.n_items, self.factors, self.mlp_layer_count)
      if shape != want:
        raise ValueError(f"`{name}` must have the same (n_users, n_items, "
                         f"embed_dim, mlp_layers) {want}. Received: {shape}")
    for mine, theirs in zip(self.gmf_tables() + self.mlp_tables(),
                            gmf.gmf_tables() + mlp.mlp_tables()):
      mine.assign(theirs)
    for mine, theirs in zip(self.mlp_layers, mlp.mlp_layers):
      mine.kernel.assign(theirs.kernel)
      mine.bias.assign(theirs.bias)
    a = self.alpha
    self.output_kernel.assign(tf.concat(
        [a * tf.convert_to_tensor(gmf.output_kernel),
         (1.0 - a) * tf.convert_to_tensor(mlp.output_kernel)], 0))
    self.output_bias.assign(a * tf.convert_to_tensor(gmf.output_bias) +
                            (1.0 - a) * tf.convert_to_tensor(mlp.output_bias))

  # ------------------------------------------------------------ config
  def describe(self):
    out = super().describe()
    out.update(embed_dim=self.factors, towers=self.towers,
               mlp_layers=self.mlp_layer_count, l2_reg=self.l2_reg)
    return out

  def get_config(self):
    config = self.base_config()
    config.update(embed_dim=self.factors, towers=self.towers,
                  mlp_layers=self.mlp_layer_count, l2_reg=self.l2_reg,
                  alpha=self.alpha, init_stddev=self.init_stddev)
    return config

  @classmethod
  def from_run_config(cls, config, dataset):
    """The model of a run; with `--neumf_pretrain=GMF,MLP` its towers are
    loaded from those two runs' checkpoints (their selected rounds)."""
    def build(towers):
      return cls(dataset.n_users, dataset.n_items, embed_dim=config.embed_dim,
                 towers=towers, mlp_layers=config.neumf_layers,
                 l2_reg=config.l2_reg, alpha=config.neumf_alpha,
                 seed=config.seed, name="neumf")

    model = build(config.neumf_towers)
    pretrain = tuple(config.neumf_pretrain or ())
    if pretrain:
      from maml_tf.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
      if len(pretrain) != 2 or config.neumf_towers != "both":
        raise UsageError("`--neumf_pretrain` must be two runs GMF,MLP with "
                         "--neumf_towers=both. Received: "
                         f"{','.join(pretrain)!r}")
      towers = []
      for kind, path in zip(("gmf", "mlp"), pretrain):
        tower = build(kind)
        try:
          checkpoint_lib.restore(tower, os.path.expanduser(path), which="best")
        except UsageError as e:
          raise UsageError(
              f"`--neumf_pretrain` must be a gmf run then an mlp run of this "
              f"run's data, --embed_dim and --neumf_layers; the {kind} run "
              f"failed: {str(e).rstrip('.')}. Received: {','.join(pretrain)!r}") from None
        towers.append(tower)
      model.load_towers(*towers)
    return model
