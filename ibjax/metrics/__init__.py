"""Metrics on a run's MI history, on its representations, and across runs.

Everything here is a pure function. The array functions (:func:`minmax_normalise`,
:func:`stealth_distance`, :func:`stealth_bootstrap`, :func:`silhouette_samples`,
:func:`silhouette_score`, :func:`pca_2d`) take and return ``jnp`` arrays and are usable under jit,
vmap and grad (with the noted static arguments); the dict functions (:func:`stealthiness`,
:func:`size_matched_comparisons`, :func:`group_silhouettes`, :func:`select_epochs`,
:func:`compare_runs`, ...) read plain Python structures as stored in a run's files and return plain
Python values.

Modules, one concern each (every public name is also importable from ``ibjax.metrics``):

- :mod:`~ibjax.metrics.names`: the parts of an MI history (quantities, reads, target groups,
  stealthiness components) and :func:`is_finite_number`; no jax import (the plots use it).
- :mod:`~ibjax.metrics.history`: reading an MI history (clean classes, available epochs).
- :mod:`~ibjax.metrics.stealth`: min-max normalisation, the stealth distance, its bootstrap
  standard errors, :func:`stealthiness` and the choice of its epochs.
- :mod:`~ibjax.metrics.comparison`: size-matched target-vs-clean comparisons and their Markdown.
- :mod:`~ibjax.metrics.runs`: protocols of runs (what must match for a comparison), seed statistics
  and the ranking of attacks used by ``experiments.compare``.
- :mod:`~ibjax.metrics.clustering`: silhouette scores and the 2-D embeddings of T (PCA; t-SNE with
  scikit-learn).
- :mod:`~ibjax.metrics.processing`: the data processing check I(X;Y_pred) <= I(X;T).
- :mod:`~ibjax.metrics.backdoor`: the authors' bound checks, H(B), I(B;Y), I(B;Y_pred) and I(X;B).
- :mod:`~ibjax.metrics.claims`: the paper's claims C1-C6 judged on finished runs (verdicts and the
  numbers behind them).
"""

from ibjax.metrics import backdoor, claims, clustering, comparison, history, names, processing, runs, stealth
from ibjax.metrics.backdoor import BACKDOOR_CHECK_MI, backdoor_bounds
from ibjax.metrics.processing import data_processing_check
from ibjax.metrics.claims import ClaimResult, ClaimRun, claims_markdown, closed_form_label_mi, evaluate_claims
from ibjax.metrics.clustering import (
    EMBEDDINGS,
    check_embedding,
    cluster_ids,
    embed_2d,
    group_silhouettes,
    pca_2d,
    silhouette_samples,
    silhouette_score,
    tsne_2d,
)
from ibjax.metrics.comparison import SIZE_MATCHED_GROUPS, size_matched_comparisons, size_matched_markdown
from ibjax.metrics.history import available_epochs, clean_groups, seed_mean_history
from ibjax.metrics.names import (
    DEFAULT_STEALTH_EPOCHS,
    NORMALISATIONS,
    QUANTITIES,
    READS,
    STEALTH_COMPONENTS,
    STEALTH_TARGET_GROUPS,
    clean_group_key,
    is_clean_group,
    is_finite_number,
)
from ibjax.metrics.runs import (
    ANALYSIS_FIELDS,
    RUN_IDENTITY_FIELDS,
    compare_runs,
    flatten_config,
    prediction_p_value,
    protocol_labels,
    protocol_of,
    protocol_order,
    pooled_mean,
    seed_statistics,
    welch_p_value,
)
from ibjax.metrics.stealth import (
    DEFAULT_SE_DRAWS,
    minmax_normalise,
    select_epochs,
    stealth_bootstrap,
    stealth_description,
    stealth_distance,
    stealthiness,
)

__all__ = [
    *names.__all__,
    *history.__all__,
    *stealth.__all__,
    *backdoor.__all__,
    *processing.__all__,
    "ClaimRun", "ClaimResult", "evaluate_claims", "claims_markdown", "closed_form_label_mi",
    *comparison.__all__,
    *runs.__all__,
    *clustering.__all__,
]
