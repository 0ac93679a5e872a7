"""scripts/benchmark.py's pure logic: the floors' arithmetic, the scenario
selection, the model settings read from the flagfiles, the synthetic data's
shapes and split, and the printed tables (no TensorFlow, no timing)."""

import os
import sys
from types import SimpleNamespace as NS

import numpy as np
import pytest

from tests.helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench_floors  # noqa: E402
import bench_scenarios  # noqa: E402
import bench_settings  # noqa: E402
import bench_sizes  # noqa: E402
import bench_system  # noqa: E402
import bench_table  # noqa: E402

MODELS = ("maml", "cml", "mf", "lightgcn")


# ------------------------------------------------------------------ floors
def test_ranking_floor_adds_the_matmul_and_the_scan():
  # 10 users x 1,000 items = 10^4 pairs; 128 flops a pair at 1.28 GFLOP/s
  # is 1 ms, 10^4 scores at 10^6 scores/s is 10 ms.
  floor = bench_floors.ranking_floor(10, 1000, 128, 1.28e9, 1e6)
  assert floor["score_s"] == pytest.approx(1e-3)
  assert floor["scan_s"] == pytest.approx(1e-2)
  assert floor["seconds"] == pytest.approx(1.1e-2)
  # 200 tanh a pair at 10^8 tanh/s: 20 ms more.
  floor = bench_floors.ranking_floor(10, 1000, 128, 1.28e9, 1e6, 200, 1e8)
  assert floor["transcendental_s"] == pytest.approx(2e-2)
  assert floor["seconds"] == pytest.approx(3.1e-2)


def test_two_stage_floor_is_a_full_dot_ranking_then_n_pairs_of_the_models_work():
  # First stage: 10 users x 1,000 items at 128 flops (1 ms at 1.28 GFLOP/s)
  # + 10^4 scores read (10 ms at 10^6/s). Second: 10 x 50 pairs at 2,000
  # flops (1 ms at 1 GFLOP/s), 500 scores read (0.5 ms), 100 tanh a pair
  # at 10^7/s (5 ms).
  floor = bench_floors.two_stage_floor(10, 1000, 50, 128, 1.28e9, 2000, 1e9, 1e6,
                                       100, 1e7)
  assert floor["first_stage_s"] == pytest.approx(1.1e-2)
  assert floor["second_stage_s"] == pytest.approx(1e-3 + 5e-4 + 5e-3)
  assert floor["second_transcendental_s"] == pytest.approx(5e-3)
  assert floor["seconds"] == pytest.approx(1.1e-2 + 6.5e-3)


def test_step_floor_counts_adams_seven_streams_and_the_propagations():
  assert bench_floors.adam_bytes(1000) == 28_000
  floor = bench_floors.step_floor(1000, 28_000.0, propagations=6, propagation_s=0.5,
                                  flops=2e9, flops_per_s=1e9, transcendentals=3e6,
                                  transcendentals_per_s=1e6)
  assert floor["adam_s"] == pytest.approx(1.0)
  assert floor["propagation_s"] == pytest.approx(3.0)
  assert floor["compute_s"] == pytest.approx(2.0)
  assert floor["transcendental_s"] == pytest.approx(3.0)
  assert floor["seconds"] == pytest.approx(9.0)
  assert bench_floors.step_floor(1000, 28_000.0)["seconds"] == pytest.approx(1.0)


def test_fraction_is_floor_over_measured_and_none_when_unknown():
  assert bench_floors.fraction(1.0, 4.0) == 0.25
  assert bench_floors.fraction(None, 4.0) is None
  assert bench_floors.fraction(1.0, 0.0) is None
  fig = bench_floors.figure(2.0, {"seconds": 0.5, "adam_s": 0.5}, key="per_step_s")
  assert fig == {"per_step_s": 2.0, "floor": 0.5, "fraction": 0.25,
                 "floor_parts": {"adam_s": 0.5}}


# ------------------------------------------------------------------ scenarios
def test_default_scenarios_every_model_at_the_growth_sizes_cml_lrml_at_ml20m():
  names = bench_scenarios.default_scenarios(("mf", "cml", "lrml"))
  assert names == ["mf@office", "cml@office", "lrml@office",
                   "mf@clothing", "cml@clothing", "lrml@clothing",
                   "mf@items100k", "cml@items100k", "lrml@items100k",
                   "cml@ml20m", "lrml@ml20m"]
  assert set(bench_scenarios.SIZES) == set(bench_sizes.SIZES) == set(bench_sizes.QUICK)


def test_select_filters_and_inserts_the_release_after_maml():
  select = bench_scenarios.select
  assert select(None, ["mf"], ["office", "ml20m"], None, MODELS) == ["mf@office"]
  assert select(None, None, ["ml20m"], None, MODELS) == ["cml@ml20m"]
  every = select(None, None, None, None, MODELS)
  assert every[-3:] == ["serve", "workers", "loader"]
  assert select(["mf@ml20m", " loader"], None, None, None, MODELS) == ["mf@ml20m", "loader"]
  assert select(["maml@office", "mf@office"], None, None, "/rel", MODELS) == [
      "maml@office", "release", "mf@office"]
  assert select(["mf@office"], None, None, "/rel", MODELS) == ["mf@office"]


@pytest.mark.parametrize("args, message", [
    ((["mf@mars"], None, None, None), "`--only` must name <model>@<size>"),
    ((["bpr@office"], None, None, None), "Received: 'bpr@office'"),
    ((None, ["bpr"], None, None), "`--models` must name some of maml, cml"),
    ((None, None, ["huge"], None), "`--sizes` must name some of office"),
    ((["release"], None, None, None), "`--release_dir` is required"),
])
def test_select_refuses_unknown_names_in_one_line(args, message):
  with pytest.raises(ValueError, match=None) as e:
    bench_scenarios.select(*args, MODELS)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_vector_features_keeps_the_vector_extensions():
  line = "fpu vme avx2 sse4_2 avx512f avx512_vnni amx_tile fma ht"
  assert bench_scenarios.vector_features(line) == [
      "amx_tile", "avx2", "avx512_vnni", "avx512f", "fma", "sse4_2"]


# ------------------------------------------------------------------ settings
def test_settings_read_the_model_flagfile_with_its_includes_in_order():
  lrml = bench_settings.settings("lrml", ROOT)
  # office.flags (included first) says num_neg 4 and margin 1.6; the LRML
  # flagfile's own lines after the include win.
  assert lrml["num_neg"] == 1 and lrml["margin"] == 0.5
  assert lrml["batch_size"] == 5000 and lrml["use_rank_weight"] is True
  assert "modalities" not in lrml and "train_steps" not in lrml  # not model/training
  lightgcn = bench_settings.settings("lightgcn", ROOT)
  assert (lightgcn["batch_size"], lightgcn["num_neg"], lightgcn["gcn_layers"]) == (2048, 1, 3)
  assert bench_settings.settings("ngcf", ROOT)["ngcf_layers"] == ("64", "64", "64")


def test_read_flag_lines_expands_includes_and_negations(tmp_path):
  (tmp_path / "base.flags").write_text("--batch_size=10\n--use_cov_loss\n# note\n")
  (tmp_path / "top.flags").write_text("--flagfile=base.flags\n--nouse_cov_loss\n"
                                      "--batch_size=20\n")
  lines = bench_settings.read_flag_lines(str(tmp_path / "top.flags"), str(tmp_path))
  assert lines == [("batch_size", "10"), ("use_cov_loss", None),
                   ("nouse_cov_loss", None), ("batch_size", "20")]


def test_pair_work_counts_each_scoring_by_hand():
  dot = NS(model_kind="vbpr", score_width=129, attention=None)
  assert bench_settings.pair_work(dot)["flops"] == 258
  assert bench_settings.pair_work(dot)["shape"] is None
  # NeuMF: GMF dot 2 x 8, then the MLP after its split first layer: relu on
  # 32, 32 x 16 and 16 x 8 layers, the 8-wide output: 16 + 32 + 1024 + 256 + 16.
  neumf = NS(model_kind="neumf", factors=8, has_gmf=True, has_mlp=True,
             hidden_widths=[32, 16, 8])
  work = bench_settings.pair_work(neumf)
  assert (work["flops"], work["tanh"], work["shape"]) == (1344, 0, (32, 16))
  maml = NS(model_kind="maml", attention=NS(dense2=NS(kernel=NS(shape=(320, 64)))))
  work = bench_settings.pair_work(maml)
  assert (work["flops"], work["tanh"], work["shape"]) == (
      2 * 320 * 64 + 2 * 320 + 8 * 64, 384, (320, 64))
  mario = NS(model_kind="mario", attention=object(), n_modalities=3, width=64,
             hidden_dim=64)
  assert bench_settings.pair_work(mario)["tanh"] == 195


def test_graph_layers_of_each_kind_of_model():
  assert bench_settings.graph_layers(NS(gcn_layers=3)) == 3
  assert bench_settings.graph_layers(NS(propagation=NS(layer_sizes=(64, 64)))) == 2
  assert bench_settings.graph_layers(NS(backbone="mf", gcn_layers=3)) == 0
  assert bench_settings.graph_layers(NS(embed_dim=64)) == 0


# ------------------------------------------------------------------ sizes
TINY = bench_sizes.Size("tiny", 300, 120, 3000, bench_sizes.Side(5, 1.0, 0.02),
                        bench_sizes.Side(2, 1.2, 0.01), (), "a test size")


def test_degrees_keep_the_minimum_and_the_total():
  rng = np.random.default_rng(0)
  d = bench_sizes.degrees(rng, 300, 3000, bench_sizes.Side(5, 1.0, 0.02))
  assert d.min() >= 5 and d.sum() == 3000
  assert d.max() > 3 * np.median(d)  # skewed, not uniform


def test_synthetic_pairs_are_distinct_in_range_and_skewed():
  pairs = bench_sizes.synthetic_pairs(TINY)
  keys = pairs[:, 0] * TINY.n_items + pairs[:, 1]
  assert len(np.unique(keys)) == len(pairs) > 0.85 * TINY.interactions
  assert pairs[:, 0].max() < TINY.n_users and pairs[:, 1].max() < TINY.n_items
  items = bench_sizes.degree_summary(pairs, 1)
  assert items["top10_share"] > 0.2 and items["max"] > 3 * items["median"]
  assert np.array_equal(bench_sizes.sorted_unique(np.array([3, 1, 3, 2])), [1, 2, 3])


def test_split_per_user_is_a_partition_with_a_test_pair_for_every_user():
  pairs = bench_sizes.synthetic_pairs(TINY)
  train, valid, test = bench_sizes.split_per_user(pairs, TINY.n_users)
  both = np.concatenate([train, valid, test])
  assert len(both) == len(pairs)
  assert np.array_equal(np.unique(both, axis=0), np.unique(pairs, axis=0))
  assert set(test[:, 0]) == set(pairs[:, 0])
  assert len(test) == pytest.approx(0.1 * len(pairs), rel=0.5)


# ------------------------------------------------------------------ system
def test_release_figures_read_flat_or_nested_keys():
  assert bench_system.release_figures(
      {"train_pairs_per_s": 40000, "eval_seconds": 99.5}) == (40000.0, 99.5)
  assert bench_system.release_figures(
      {"train": {"pairs_per_s": 1}, "eval": {"seconds": 2}}) == (1.0, 2.0)
  assert bench_system.release_figures({"other": 3}) == (None, None)
  assert bench_system.result_line("x\nRESULT {\"a\": 1}\nRESULT {\"a\": 2}\n") == {"a": 2}
  assert bench_system.result_line("no result") is None


# ------------------------------------------------------------------ tables
def _scenario(model, size, items, eval_fig=None, how="whole_epoch"):
  train = {"how": how, "steps": 40, "per_step_s": 0.02, "pairs_per_s": 100000.0,
           "epoch_s": 2.0, "compile_s": 1.5, "floor": 0.005, "fraction": 0.25,
           "floor_parts": {"propagation_s": 0.004, "adam_s": 0.001}}
  evaluation = eval_fig or {"users": 1000, "items": items, "seconds": 1.2,
                            "prepare_s": 0.2, "per_user_ms": 1.0, "floor": 0.6,
                            "fraction": 0.6, "first_chunk_s": 0.5}
  memory = {"peak_rss_mb": 1000.0, "floor": 800.0, "fraction": 0.8,
            "floor_parts": {"base_mb": 700.0, "variables_mb": 50.0, "data_mb": 20.0,
                            "graph_mb": 10.0, "chunk_mb": 20.0}}
  return {"model": model, "size": size, "n_items": items, "train": train,
          "eval": evaluation, "memory": memory, "peak_rss_mb": 1000.0}


def test_render_prints_floors_fractions_and_what_was_computed():
  skipped = {"users": 200000, "items": 100000, "skipped": "not run: 2,866 chunks",
             "floor": 7000.0, "fraction": None}
  results = {"machine": {"cpu": "Test CPU", "cores": 2, "vector": ["avx2", "avx512f"],
                         "tensorflow": "2.x", "python": "3.11"},
             "scenarios": {
                 "lightgcn@office": _scenario("lightgcn", "office", 2406),
                 "lightgcn@items100k": _scenario("lightgcn", "items100k", 100000,
                                                 how="computed_from_steps"),
                 "maml@items100k": dict(
                     _scenario("maml", "items100k", 100000, skipped),
                     two_stage={"users": 200000, "items": 100000, "candidates": 100,
                                "seconds": 250.0, "prepare_s": 10.0, "per_user_ms": 1.2,
                                "floor": 120.0, "fraction": 0.5, "first_chunk_s": 3.0}),
                 "mario@items100k": dict(
                     _scenario("mario", "items100k", 100000, skipped),
                     two_stage={"candidates": 100, "skipped": "not run: no first stage"}),
                 "mf@office": {"error": "Traceback\nValueError: boom\n"}}}
  text = bench_table.render(results, ("lightgcn", "mario"))
  assert "vector features: avx2 avx512f" in text
  assert "computed: 40 steps" in text and "whole epoch" in text
  assert "not run: 2,866 chunks; floor 7,000 s" in text
  assert "two-stage evaluation of every test user" in text
  assert ("maml@items100k        200,000  100,000   100     250.0      10.0    1.200"
          "    120.0   50%        3.00") in text
  assert "mario@items100k             -        -   100  not run: no first stage" in text
  assert "lightgcn@office" not in text.split("two-stage evaluation")[1].split("peak memory")[0]
  assert "lightgcn@office: evaluation at 60% of its floor (>= 50%): met" in text
  # A full ranking skipped by --max_eval_s is not judged, neither met nor missed.
  assert ("mario@items100k: evaluation not measured in this run (target >= 50% of its "
          "floor): not judged") in text
  assert "mario@items100k: evaluation at" not in text
  assert "step 20.0 ms = 5.0x its propagation floor, 4.0x propagation + Adam" in text
  assert "items 2,406 -> 100,000" in text
  assert "mf@office: failed (ValueError: boom)" in text
  # No release measured and no maml@office: no comparison line at all.
  assert "release" not in text


def test_release_rows_give_the_ratios_or_say_why_not():
  maml = _scenario("maml", "office", 2406)
  rows = bench_table.release_rows({"maml@office": maml})
  assert rows[0].startswith("MAML vs the release: release not measured: pass --release_dir")
  rows = bench_table.release_rows({"maml@office": maml, "release": {
      "train_pairs_per_s": 20000.0, "eval_seconds": 30.0}})
  assert "5.00x (target >= 4.5x: met)" in rows[0]
  assert "25.0x faster (target >= 20x: met)" in rows[1]
  rows = bench_table.release_rows({"maml@office": maml, "release": {
      "train_pairs_per_s": 50000.0, "eval_seconds": 12.0, "eval_users": 4000}})
  assert "MISSED" in rows[0] and "MISSED" in rows[1]
  assert "(users: 1,000 here, 4,000 in the release's)" in rows[1]
  rows = bench_table.release_rows({"maml@office": maml, "release": {
      "train_pairs_per_s": 50000.0}}, quick=True)
  assert len(rows) == 2 and "not the targets" in rows[1]


def test_scratch_folders_are_removed_when_the_scenario_ends(tmp_path):
  """A scenario's temporary folders (its workdir, export, data) go when its
  process exits, whatever they hold."""
  import subprocess
  program = ("import os, sys; sys.path.insert(0, sys.argv[1]); import bench_system; "
             "d = bench_system.scratch_dir('bench-test-'); "
             "os.makedirs(os.path.join(d, 'a', 'b')); "
             "open(os.path.join(d, 'a', 'b', 'f'), 'w').write('x'); print(d)")
  out = subprocess.run([sys.executable, "-c", program, os.path.join(ROOT, "scripts")],
                       capture_output=True, text=True, check=True,
                       env=dict(os.environ, TMPDIR=str(tmp_path)))
  folder = out.stdout.strip()
  assert folder.startswith(str(tmp_path)) and os.path.basename(folder).startswith("bench-test-")
  assert not os.path.exists(folder)
