"""The rules of a run's settings that involve several flags, a list's items
or the file system; each field's own rule (its choices, its range) is
checked from the field itself (maml_tf/settings.py). `Config.validate`
runs these after those, in this order; each raises the one-line UsageError
of the first broken rule.
"""

from __future__ import annotations

import os

from maml_tf import models as models_lib
from maml_tf.data.modalities import MODALITY_NAME
from maml_tf.settings import fail

# What gives a run a validation split, for the messages that need one
# (--patience, --refit, `maml-tf tune`).
VALIDATION_SOURCES = ("--protocol=split, --validation_fraction > 0, or data "
                      "that gives one (a valid.csv, a RecBole "
                      "<name>.valid.inter, MMRec rows with x_label 1)")


def check_lists(c):
  """The list flags' items: names, cutoffs, pairs."""
  if (not c.paper_trains
      or set(c.paper_trains) - {"fusion", "attention"}
      or len(set(c.paper_trains)) != len(c.paper_trains)):
    fail("paper_trains", "must name fusion, attention or both, once each",
          ",".join(c.paper_trains))
  for name in c.preservation_modalities:
    if not MODALITY_NAME.match(name):
      fail("preservation_modalities", "must be modality names like text, "
            "meta", ",".join(c.preservation_modalities))
  if not c.topk:
    fail("topk", "must name at least one cutoff", "")
  for k in c.topk:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
      fail("topk", "must be positive integers", ",".join(map(str, c.topk)))
  if c.modalities is not None:
    for name in c.modalities:
      if not MODALITY_NAME.match(name):
        fail("modalities", "must be names like text, image, meta",
              ",".join(c.modalities))
    if len(set(c.modalities)) != len(c.modalities):
      fail("modalities", "must not repeat a name", ",".join(c.modalities))
  for item in c.extra_features:
    name, sep, path = item.partition("=")
    if not sep or not MODALITY_NAME.match(name.strip()) or not path.strip():
      fail("extra_features", "items must look like name=path", item)
  if c.neumf_pretrain and (len(c.neumf_pretrain) != 2 or
                              not all(p.strip() for p in c.neumf_pretrain)):
    fail("neumf_pretrain", "must name two runs, GMF_RUN,MLP_RUN",
          ",".join(c.neumf_pretrain))
  if not c.ngcf_layers or not all(
      str(s).strip().isdigit() and int(s) >= 1 for s in c.ngcf_layers):
    fail("ngcf_layers", "must be positive integers, one width per layer",
          ",".join(map(str, c.ngcf_layers)))


def check_combinations(c):
  """The rules that involve several flags."""
  if models_lib.spec(c.model).one_negative and c.num_neg != 1:
    fail("num_neg", f"must be 1 with --model={c.model} (it trains on one "
          "negative per positive)", c.num_neg)
  if c.train_steps % c.eva_batches:
    fail("train_steps", f"must be a multiple of --eva_batches "
          f"({c.eva_batches}), one evaluation per round", c.train_steps)
  metric, _, k = c.select_metric.partition("@")
  if (metric not in ("ndcg", "recall", "hr", "precision") or not k.isdigit()
      or int(k) not in c.topk):
    fail("select_metric", "must be ndcg|recall|hr|precision@k with k in "
          "--topk", c.select_metric)
  if c.protocol == "loo" and metric not in ("ndcg", "hr"):
    fail("select_metric", "must be ndcg@k or hr@k with --protocol=loo (its "
          "only metrics)", c.select_metric)
  if c.protocol == "split" and c.validation_fraction:
    fail("validation_fraction", "must be 0 with --protocol=split (it holds "
          "out its own validation split)", c.validation_fraction)
  if c.eval_candidates and c.protocol == "loo":
    fail("eval_candidates", "must be 0 with --protocol=loo (it ranks "
          "--loo_negatives sampled items, not the catalogue)", c.eval_candidates)
  if c.eval_candidates and c.eval_candidates < max(c.topk):
    fail("eval_candidates", f"must be 0 or >= the largest --topk "
          f"({max(c.topk)})", c.eval_candidates)
  if c.dataset == "office" and c.data_format not in ("auto", "release"):
    fail("data_format", "must be auto or release with --dataset=office "
          "(built in, the release's layout)", c.data_format)
  if c.restore_from and c.init_from:
    fail("init_from", "must not be given with --restore_from (one starting "
          "point)", c.init_from)
  if c.neumf_pretrain and c.neumf_towers != "both":
    fail("neumf_pretrain", "must be empty unless --neumf_towers=both (it "
          "loads a GMF and an MLP tower)", ",".join(c.neumf_pretrain))
  if c.export_name is not None and not MODALITY_NAME.match(c.export_name):
    fail("export_name", "must be a name like maml_office (a-z, 0-9, _)",
          c.export_name)


def check_paths(c):
  """The files and folders the flags name."""
  if c.dataset == "custom":
    if not c.data_dir:
      fail("data_dir", "is required with --dataset=custom", c.data_dir)
    if not os.path.isdir(c.data_dir):
      fail("data_dir", "must be an existing folder", c.data_dir)
  for flag, path in (("text_features", c.text_features),
                     ("image_features", c.image_features)):
    if path and not os.path.exists(path):
      fail(flag, "must name an existing file", path)
  if not c.workdir:
    fail("workdir", "must be a folder path", c.workdir)
  for flag in ("restore_from", "init_from"):
    path = getattr(c, flag)
    if path and not os.path.exists(path) and not os.path.exists(path + ".index"):
      fail(flag, "must name an existing checkpoint", path)
  for path in c.neumf_pretrain:
    path = os.path.expanduser(path.strip())
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
      fail("neumf_pretrain", "must name existing runs or checkpoints",
            ",".join(c.neumf_pretrain))
