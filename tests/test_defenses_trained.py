"""The detectors on a trained BadNets small CNN and its clean twin (mnist5k, the same seed): STRIP's
entropy, BAN's verdict and suspected target, and the registry's records of both networks."""


import jax
import numpy as np
import pytest
from benchmarks.defense_cost import pair_config, train_pair

from ibjax.defenses import BANConfig, auroc, ban_detect, strip_entropy
from ibjax.defenses.registry import run_defenses
from ibjax.defenses.strip import NetworkLogits
from ibjax.pipeline import gather_batch
from ibjax.study.defenses import member_defense_inputs


@pytest.fixture(scope="module")
def pair():
    p = train_pair(pair_config())  # the benchmark's pair: mnist5k, small CNN, BadNets 10%, 4 epochs
    assert p.metrics["backdoored"]["asr"] > 0.9 and p.metrics["clean"]["asr"] < 0.2  # the ground truth holds
    return p


def _test_images(p, triggered=False):
    data = p.setup.triggered_test if triggered else p.setup.clean_test
    idx = np.arange(len(np.asarray(data.labels)))
    x, _, _ = gather_batch(data, idx, p.setup.attack.test_trigger)
    return np.asarray(x), np.asarray(data.labels)


def test_strip_entropy_is_lower_on_triggered_than_on_clean_inputs(pair):
    clean, labels = _test_images(pair)
    trig, _ = _test_images(pair, triggered=True)
    r = np.random.default_rng(0).permutation(len(labels))
    pool, inspect = clean[r[:200]], r[200:500]
    fn = NetworkLogits(pair.setup.model)
    h_clean = strip_entropy(jax.random.PRNGKey(0), fn, pair.backdoored, clean[inspect], pool, overlays=16)
    h_trig = strip_entropy(jax.random.PRNGKey(1), fn, pair.backdoored, trig[inspect], pool, overlays=16)
    assert float(np.mean(h_trig)) < 0.75 * float(np.mean(h_clean))
    # as a detector (score = -entropy): triggered inputs rank above clean ones
    scores = np.r_[-np.asarray(h_clean), -np.asarray(h_trig)]
    assert float(auroc(scores, np.r_[np.zeros(300, bool), np.ones(300, bool)])) > 0.75


def test_ban_flags_the_backdoored_network_not_its_clean_twin_and_names_the_target(pair):
    x, y = _test_images(pair)
    r = np.random.default_rng(0).permutation(len(y))
    fit, score = r[:100], r[100:]
    cfg = BANConfig(mask_epochs=5, noise_batches=5)
    res = {name: ban_detect(jax.random.PRNGKey(0), pair.setup.model, v, x[fit], y[fit], x[score], y[score], cfg)
           for name, v in (("backdoored", pair.backdoored), ("clean", pair.clean))}
    assert float(res["backdoored"].score) > 0.9 and int(res["backdoored"].target) == 0
    assert float(res["clean"].score) < float(res["backdoored"].score) - 0.2
    np.testing.assert_allclose(float(np.sum(res["clean"].histogram)), 1.0, atol=1e-5)


def test_the_registry_on_the_trained_pair(pair):
    s = pair.setup
    names = ["spectral", "uclc", "tac", "clp", "representation"]
    out = {name: run_defenses(member_defense_inputs(s, v), names, jax.random.PRNGKey(0))
           for name, v in (("backdoored", pair.backdoored), ("clean", pair.clean))}
    bd, cl = out["backdoored"], out["clean"]
    assert list(bd) == names and all(r["wall_s"] > 0 for r in bd.values())
    assert bd["spectral"]["poisoned"] == int(np.sum(s.plan.poisoned)) and 0.0 <= bd["spectral"]["auroc"] <= 1.0
    assert bd["clp"]["asr_before"] > 0.9 and cl["clp"]["asr_before"] < 0.2  # evaluate_attack's ASR, recounted
    assert bd["clp"]["accuracy_before"] == pytest.approx(pair.metrics["backdoored"]["test_accuracy"], abs=0.03)
    # the trigger moves the backdoored network's last block far more than the clean twin's
    assert bd["tac"]["score"] > cl["tac"]["score"]
    # backdoor samples' T is linearly readable from the target class's clean T in the backdoored network
    assert bd["representation"]["linear_probe"] > 0.9
    assert np.isfinite(bd["uclc"]["score"]) and bd["representation"]["ot_distance"] > 0
