"""The benchmark's printed tables, from its results (pure: no TensorFlow).

`render(results)` is everything scripts/benchmark.py prints after the runs:
the machine, then per model scenario the training, evaluation and memory
figures each with its floor and fraction (floor / measured), the growth of
each model with the catalogue, the release comparison, the issue's targets
(met or missed, from this run's figures) and the system scenarios.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from bench_scenarios import GROWTH_SIZES, SIZE_ORDER

DOT_TARGET = 0.5  # fraction of the floor the dot-product evaluations reach
STEP_TARGET = 0.5  # a LightGCN step within 2x its floor
MEMORY_TARGET = 0.5  # peak within 2x of its floor
TRAIN_RATIO_TARGET = 4.5  # MAML's training pairs/s over the release's
EVAL_RATIO_TARGET = 20.0  # the release's Office evaluation s over ours


def pct(value: Optional[float]) -> str:
  return "-" if value is None else f"{100 * value:.0f}%"


def num(value: Optional[float], digits: int = 0) -> str:
  if value is None:
    return "-"
  return f"{value:,.{digits}f}"


def secs(value: Optional[float]) -> str:
  """Seconds with the precision that matters at that size."""
  if value is None:
    return "-"
  if value < 0.1:
    return f"{value:.3f}"
  if value < 10:
    return f"{value:.2f}"
  if value < 1000:
    return f"{value:.1f}"
  return f"{value:,.0f}"


def model_scenarios(scenarios: Dict[str, dict]) -> List[str]:
  """The `<model>@<size>` names that ran, by model then size order."""
  names = [n for n, r in scenarios.items() if "@" in n and "error" not in r]
  rank = {s: i for i, s in enumerate(SIZE_ORDER)}
  return sorted(names, key=lambda n: (n.split("@")[0], rank.get(n.split("@")[1], 99)))


def machine_line(machine: dict) -> str:
  vector = " ".join(machine.get("vector", [])) or "none reported"
  return (f"machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
          f"TF {machine.get('tensorflow', '?')}, Python {machine.get('python', '?')}\n"
          f"vector features: {vector}")


def train_rows(scenarios) -> List[str]:
  lines = ["training (fraction = floor / measured; floor = Adam's dense update at "
           "the measured bandwidth + 2 x L graph products + the batch's pairs scored "
           "once and the covariance loss at the matmul rate)",
           f"{'scenario':<20}{'pairs/s':>11}{'step ms':>10}{'floor ms':>10}{'frac':>6}"
           f"{'epoch s':>10}  {'how':<22}{'compile s':>10}{'build s':>9}"]
  for name in model_scenarios(scenarios):
    t = scenarios[name].get("train")
    if not t:
      continue
    how = "whole epoch" if t["how"] == "whole_epoch" else f"computed: {t['steps']} steps"
    lines.append(f"{name:<20}{num(t['pairs_per_s']):>11}{1000 * t['per_step_s']:>10.1f}"
                 f"{1000 * t['floor']:>10.1f}{pct(t['fraction']):>6}"
                 f"{secs(t['epoch_s']):>10}  {how:<22}{secs(t['compile_s']):>10}"
                 f"{secs(scenarios[name].get('build_s')):>9}")
  return lines


def eval_rows(scenarios) -> List[str]:
  lines = ["full-ranking evaluation of every test user (floor = the pairs' work at "
           "the matmul rate + every score read once; prepare = one-time tables)",
           f"{'scenario':<20}{'users':>9}{'items':>9}{'eval s':>10}{'prepare s':>10}"
           f"{'user ms':>9}{'floor s':>9}{'frac':>6}{'1st chunk s':>12}"]
  for name in model_scenarios(scenarios):
    e = scenarios[name].get("eval")
    if not e:
      continue
    if "skipped" in e:
      lines.append(f"{name:<20}{num(e['users']):>9}{num(e['items']):>9}  {e['skipped']}"
                   f"; floor {secs(e['floor'])} s")
      continue
    lines.append(f"{name:<20}{num(e['users']):>9}{num(e['items']):>9}"
                 f"{secs(e['seconds']):>10}{secs(e['prepare_s']):>10}"
                 f"{e['per_user_ms']:>9.3f}{secs(e['floor']):>9}{pct(e['fraction']):>6}"
                 f"{secs(e['first_chunk_s']):>12}")
  return lines


def two_stage_rows(scenarios) -> List[str]:
  """The per-pair models' two-stage evaluations (--eval_candidates), where
  the run measured any."""
  names = [n for n in model_scenarios(scenarios) if scenarios[n].get("two_stage")]
  if not names:
    return []
  lines = ["two-stage evaluation of every test user (--eval_candidates=N: the "
           "retrieval space over every item, the model's score re-ranks the N "
           "best; floor = both stages' work; untrained weights)",
           f"{'scenario':<20}{'users':>9}{'items':>9}{'N':>6}{'eval s':>10}"
           f"{'prepare s':>10}{'user ms':>9}{'floor s':>9}{'frac':>6}{'1st chunk s':>12}"]
  for name in names:
    e = scenarios[name]["two_stage"]
    if "skipped" in e:
      lines.append(f"{name:<20}{num(e.get('users')):>9}{num(e.get('items')):>9}"
                   f"{num(e['candidates']):>6}  {e['skipped']}")
      continue
    lines.append(f"{name:<20}{num(e['users']):>9}{num(e['items']):>9}"
                 f"{num(e['candidates']):>6}{secs(e['seconds']):>10}"
                 f"{secs(e['prepare_s']):>10}{e['per_user_ms']:>9.3f}"
                 f"{secs(e['floor']):>9}{pct(e['fraction']):>6}"
                 f"{secs(e['first_chunk_s']):>12}")
  return lines


def memory_rows(scenarios) -> List[str]:
  lines = ["peak memory (floor = the process at start-up + variables with the "
           "optimizer's + data + graph + one chunk of scores)",
           f"{'scenario':<20}{'peak MB':>9}{'floor MB':>10}{'frac':>6}  "
           f"{'start-up / variables / data / graph / chunk MB'}"]
  for name in model_scenarios(scenarios):
    m = scenarios[name].get("memory")
    if not m:
      continue
    p = m["floor_parts"]
    parts = " / ".join(num(p[k]) for k in ("base_mb", "variables_mb", "data_mb",
                                           "graph_mb", "chunk_mb"))
    lines.append(f"{name:<20}{num(m['peak_rss_mb']):>9}{num(m['floor']):>10}"
                 f"{pct(m['fraction']):>6}  {parts}")
  return lines


def growth_rows(scenarios) -> List[str]:
  """Per model, epoch / evaluation / peak memory across the catalogue sizes."""
  lines = ["growth with the catalogue (office -> clothing -> items100k)"]
  models = sorted({n.split("@")[0] for n in model_scenarios(scenarios)})
  for model in models:
    runs = [scenarios[f"{model}@{s}"] for s in GROWTH_SIZES
            if f"{model}@{s}" in scenarios and "error" not in scenarios[f"{model}@{s}"]]
    if len(runs) < 2:
      continue
    items = " -> ".join(num(r["n_items"]) for r in runs)
    epoch = " -> ".join(secs(r["train"]["epoch_s"]) for r in runs)
    ev = " -> ".join(secs(r["eval"].get("seconds")) if "seconds" in r["eval"]
                     else "not run" for r in runs)
    peak = " -> ".join(num(r["peak_rss_mb"]) for r in runs)
    lines.append(f"{model}: items {items}; epoch s {epoch}; eval s {ev}; peak MB {peak}")
  return lines


def release_rows(scenarios, quick=False) -> List[str]:
  maml = scenarios.get("maml@office")
  rel = scenarios.get("release")
  if maml is None or "error" in maml:
    return []
  ours_pairs = maml["train"]["pairs_per_s"]
  ours_eval = maml["eval"].get("seconds")
  if rel is None or "error" in rel:
    why = "release not measured: pass --release_dir" if rel is None else (
        "release failed: " + rel["error"].strip().splitlines()[-1][:200])
    return [f"MAML vs the release: {why}; MAML here {num(ours_pairs)} pairs/s, "
            f"Office evaluation {secs(ours_eval)} s"]
  lines = []
  if rel.get("train_pairs_per_s"):
    ratio = ours_pairs / rel["train_pairs_per_s"]
    lines.append(f"MAML training {num(ours_pairs)} pairs/s vs the release's "
                 f"{num(rel['train_pairs_per_s'])}: {ratio:.2f}x (target >= "
                 f"{TRAIN_RATIO_TARGET}x: {'met' if ratio >= TRAIN_RATIO_TARGET else 'MISSED'})")
  if rel.get("eval_seconds") and ours_eval:
    ratio = rel["eval_seconds"] / ours_eval
    users = ""
    if rel.get("eval_users") and rel["eval_users"] != maml["eval"].get("users"):
      users = (f" (users: {num(maml['eval'].get('users'))} here, "
               f"{num(rel['eval_users'])} in the release's)")
    lines.append(f"Office evaluation {secs(ours_eval)} s vs the release's "
                 f"{secs(rel['eval_seconds'])} s: {ratio:.1f}x faster (target >= "
                 f"{EVAL_RATIO_TARGET:g}x: {'met' if ratio >= EVAL_RATIO_TARGET else 'MISSED'})"
                 + users)
  if lines and quick:
    lines.append("(--quick: small data on both sides; these ratios are not the targets' figures)")
  return lines


def _verdict(ok: bool) -> str:
  return "met" if ok else "MISSED"


def target_rows(scenarios, dot_models) -> List[str]:
  lines = ["targets (this run's figures)"]
  names = model_scenarios(scenarios)
  for name in names:
    model = name.split("@")[0]
    r = scenarios[name]
    frac = r["eval"].get("fraction")
    if model in dot_models:
      if frac is None:  # skipped (--max_eval_s) or failed: nothing to judge
        lines.append(f"  {name}: evaluation not measured in this run (target >= "
                     f"{pct(DOT_TARGET)} of its floor): not judged")
      else:
        lines.append(f"  {name}: evaluation at {pct(frac)} of its floor (>= "
                     f"{pct(DOT_TARGET)}): {_verdict(frac >= DOT_TARGET)}")
    if model == "lightgcn":
      t = r["train"]
      prop = t["floor_parts"].get("propagation_s") or 0.0
      ratio = t["per_step_s"] / prop if prop else None
      lines.append(f"  {name}: step {1000 * t['per_step_s']:.1f} ms = "
                   f"{num(ratio, 1)}x its propagation floor, {t['per_step_s'] / t['floor']:.1f}x "
                   f"propagation + Adam (<= 2x): {_verdict(t['fraction'] >= STEP_TARGET)}")
    if model in ("cml", "lrml") and name.endswith("@ml20m"):
      t = r["train"]
      lines.append(f"  {name}: epoch {t['epoch_s'] / 60:.1f} min "
                   f"({'measured whole' if t['how'] == 'whole_epoch' else 'computed from steps'})")
    m = r["memory"]
    if m["fraction"] is not None and m["fraction"] < MEMORY_TARGET:
      lines.append(f"  {name}: peak memory {num(m['peak_rss_mb'])} MB > 2x its floor "
                   f"{num(m['floor'])} MB: MISSED")
  over = [n for n in names if scenarios[n]["memory"]["fraction"] is not None
          and scenarios[n]["memory"]["fraction"] >= MEMORY_TARGET]
  if over:
    lines.append(f"  peak memory within 2x of its floor: {len(over)} of {len(names)} "
                 f"scenarios")
  return lines


def system_rows(scenarios) -> List[str]:
  lines = []
  row = lambda a, b, c="": lines.append(f"{a:<50}{b:>16}  {c}")  # noqa: E731
  workers = scenarios.get("workers")
  if workers and "error" not in workers:
    for n, w in sorted(workers.items()):
      if not isinstance(w, dict):
        continue
      row(f"train, {n} local worker(s) (multi_worker), pairs/s", num(w["pairs_per_s"]),
          f"{w['ms_per_step']:.0f} ms/step, {w['epochs']} whole epochs")
  serve = scenarios.get("serve")
  if serve and "error" not in serve:
    for key, v in serve.items():
      if isinstance(v, dict):
        row(f"serve {key} users, p50 / p99 ms", f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f}")
  ld = scenarios.get("loader")
  if ld and "error" not in ld:
    rows = f"{ld['rows']:,}-row train.csv ({ld['mb']:,.0f} MB)"
    row(f"loader, {rows}, rows/s (pandas)", num(ld["pandas"]["rows_per_s"]),
        f"{ld['pandas']['seconds']:.1f} s")
    if "reference" in ld:
      row("loader, rows/s (the old csv-module parser)", num(ld["reference"]["rows_per_s"]),
          f"{ld['reference']['seconds']:.1f} s; pandas/old "
          f"{ld['pandas']['rows_per_s'] / ld['reference']['rows_per_s']:.1f}x")
  return lines


def render(results: dict, dot_models=()) -> str:
  scenarios = results.get("scenarios", {})
  blocks = [[machine_line(results.get("machine", {}))]]
  if model_scenarios(scenarios):
    blocks += [train_rows(scenarios), eval_rows(scenarios), two_stage_rows(scenarios),
               memory_rows(scenarios)]
    growth = growth_rows(scenarios)
    if len(growth) > 1:
      blocks.append(growth)
  blocks.append(release_rows(scenarios, results.get("quick", False)))
  if model_scenarios(scenarios):
    blocks.append(target_rows(scenarios, dot_models))
  blocks.append(system_rows(scenarios))
  failed = [f"{n}: failed ({r['error'].strip().splitlines()[-1][:160] if r['error'].strip() else '?'})"
            for n, r in scenarios.items() if isinstance(r, dict) and "error" in r]
  blocks.append(failed)
  return "\n\n".join("\n".join(b) for b in blocks if b)
