"""Backdoor defences as pure JAX functions: detectors of poisoned samples and backdoored models,
the parameter-space view (channel Lipschitz constants, Grond's ABI, CLP) and representation metrics.

Modules, one method each:

- :mod:`~ibjax.defenses.roc`: AUROC, its stratified-bootstrap interval, rates at a threshold.
- :mod:`~ibjax.defenses.spectral`: spectral signatures (sample level).
- :mod:`~ibjax.defenses.activation_clustering`: activation clustering (sample level).
- :mod:`~ibjax.defenses.strip`: STRIP's entropy under superimposition (sample level).
- :mod:`~ibjax.defenses.loss`: ABL-style loss isolation and the loss-trajectory score (sample level).
- :mod:`~ibjax.defenses.ban`: BAN's adversarial neuron noise (model level).
- :mod:`~ibjax.defenses.monitor`: the MI-dynamics monitor, from per-class MI histories (model level).
- :mod:`~ibjax.defenses.lipschitz`: UCLC, TAC, TUP, ABI and CLP (parameter space).
- :mod:`~ibjax.defenses.representation`: Davies-Bouldin, DSWD, the OT distance, a linear probe.
- :mod:`~ibjax.defenses.network`: what those read from an ibjax network's variables.
- :mod:`~ibjax.defenses.registry`: every method by name (:data:`DEFENSES`) as a function of one
  trained run, and :func:`run_defenses`, which evaluates the sample-level ones against the poisons.
"""

from ibjax.defenses import (activation_clustering, ban, lipschitz, loss, monitor, network, registry, representation, roc,
                            spectral, strip)
from ibjax.defenses.activation_clustering import activation_clusters, principal_projection
from ibjax.defenses.ban import BAN_REFERENCE, BANConfig, BANResult, ban_detect
from ibjax.defenses.lipschitz import (
    abi_reset,
    channel_lipschitz,
    clp_prune,
    layer_outliers,
    tac_uclc_product,
    trigger_activated_change,
    uclc_score,
)
from ibjax.defenses.loss import loss_isolation, loss_trajectory_scores
from ibjax.defenses.monitor import (CleanBaseline, MonitorResult, auroc_by_epoch, class_deviation, clean_baseline, defender_view,
                                   detection_latency, monitor_scores)
from ibjax.defenses.registry import DEFENSE_NAMES, DEFENSES, RULES, DefenseInputs, resolve_defenses, run_defenses
from ibjax.defenses.representation import davies_bouldin, dswd, linear_probe, ot_distance
from ibjax.defenses.roc import auroc, auroc_interval, detection_rates, roc_curve, threshold_at_fpr
from ibjax.defenses.spectral import flag_top_per_label, spectral_scores
from ibjax.defenses.strip import strip_entropy, superimpose

__all__ = [
    "activation_clustering", "ban", "lipschitz", "loss", "monitor", "network", "registry", "representation", "roc", "spectral", "strip",
    "DEFENSE_NAMES", "DEFENSES", "RULES", "DefenseInputs", "resolve_defenses", "run_defenses",
    "activation_clusters", "principal_projection", "BAN_REFERENCE", "BANConfig", "BANResult", "ban_detect",
    "abi_reset", "channel_lipschitz", "clp_prune", "layer_outliers", "tac_uclc_product", "trigger_activated_change",
    "uclc_score", "davies_bouldin", "dswd", "linear_probe", "ot_distance",
    "auroc", "auroc_interval", "detection_rates", "roc_curve", "threshold_at_fpr",
    "flag_top_per_label", "spectral_scores", "strip_entropy", "superimpose", "loss_isolation", "loss_trajectory_scores",
    "CleanBaseline", "MonitorResult", "auroc_by_epoch", "class_deviation", "clean_baseline", "defender_view",
    "detection_latency", "monitor_scores",
]
