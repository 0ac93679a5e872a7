"""Evaluation: top-k metrics, full ranking, sampled ranking, the per-round
callback and its records, explanation and preservation measures.

Nothing here names a model: models are reached through the `RankingModel`
interface (`score_items`, `score_pairs`, `prepare_scoring`).
"""

from maml_tf import lazy

__getattr__, __dir__, __all__ = lazy.attach(__name__, {
    "METRICS": "metrics",
    "ranking_metrics": "metrics",
    "group_by_user": "metrics",
    "top_k_excluding": "metrics",
    "default_chunks": "full_ranking",
    "SampledEvaluator": "sampled",
    "Evaluator": "full_ranking",
    "EvaluationCallback": "callback",
    "RankingMetrics": "keras_callback",
    "read_records": "records",
    "metrics_table": "records",
    "preservation_report": "preservation",
    "explanation_report": "explanation",
})
