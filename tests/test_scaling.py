"""Scaling-law fits (lmforge.analysis.scaling): the loss law recovers known parameters from noisy
synthetic ladders, predicts a held-out larger model, and its bootstrap interval covers the truth;
the task-law sigmoid recovers its parameters and chains with the loss law; bad ladders are refused."""

import numpy as np
import pytest

from lmforge.analysis.scaling import (
    LossLaw,
    Prediction,
    TaskLaw,
    bootstrap_loss_laws,
    bootstrap_task_laws,
    fit_loss_law,
    fit_task_law,
    predict_accuracy,
    predict_loss,
    relative_error,
)
from lmforge.analysis.scaling_plot import plot_ladder
from lmforge.errors import LmforgeError

CHINCHILLA = LossLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022, eq. 10
# Steeper data term and higher floor, as fits on small models tend to give.
SMALL_REGIME = LossLaw(E=2.2, A=120.0, B=900.0, alpha=0.3, beta=0.35)


def grid(n_lo: float, n_hi: float, d_lo: float, d_hi: float, n_sizes: int, n_budgets: int):
    N, D = np.meshgrid(np.geomspace(n_lo, n_hi, n_sizes), np.geomspace(d_lo, d_hi, n_budgets))
    return N.ravel(), D.ravel()


def noisy(law: LossLaw, N, D, seed: int, rel: float = 0.01):
    return law(N, D) * (1 + rel * np.random.default_rng(seed).standard_normal(len(N)))


# A ladder like a real one: 5 sizes 20M..1B, 4 budgets 0.4B..20B tokens.
LADDER = grid(2e7, 1e9, 4e8, 2e10, 5, 4)
HELD_OUT = (4e9, 8e10)  # 4x the largest size, at 20 tokens per parameter


@pytest.mark.parametrize("law", [CHINCHILLA, SMALL_REGIME], ids=["chinchilla", "small-regime"])
def test_fit_recovers_parameters_under_noise(law):
    # A and B are the loss terms extrapolated to N = 1 and D = 1, so an error in alpha is
    # multiplied by log N in A: with 1% noise a ladder spanning 2 orders of magnitude gets A, B
    # wrong by 10-40%. Ten orders of magnitude (small N, D where the power terms dominate the
    # loss) pin them down to ~2% over seeds; 5% is the test's bar.
    N, D = grid(1e2, 1e12, 1e4, 1e14, 6, 6)
    fit = fit_loss_law(N, D, noisy(law, N, D, seed=0))
    for name in ("E", "A", "B", "alpha", "beta"):
        assert relative_error(getattr(fit, name), getattr(law, name)) < 0.05, (name, fit)


def test_noiseless_fit_predicts_held_out_larger_model():
    N, D = LADDER
    fit = fit_loss_law(N, D, CHINCHILLA(N, D))
    assert relative_error(fit(*HELD_OUT), CHINCHILLA(*HELD_OUT)) < 0.005


def test_bootstrap_interval_covers_truth():
    N, D = LADDER
    L = noisy(CHINCHILLA, N, D, seed=0)
    fit = fit_loss_law(N, D, L)
    boots = bootstrap_loss_laws(N, D, L, n_boot=50, seed=0, center=fit)
    assert len(boots) == 50
    # Resampling is seeded: the same call gives the same laws.
    assert bootstrap_loss_laws(N, D, L, n_boot=3, seed=0, center=fit) == boots[:3]
    pred = predict_loss(fit, boots, *HELD_OUT)
    truth = CHINCHILLA(*HELD_OUT)
    # A 90% interval covers the truth for ~9 seeds in 10 (checked over seeds 0-9); seed 0 is one.
    assert pred.low <= truth <= pred.high, (pred, truth)
    assert pred.low <= pred.value <= pred.high and pred.low < pred.high
    assert pred.value == pytest.approx(fit(*HELD_OUT))
    assert Prediction(**pred.to_dict()) == pred


def test_law_round_trips_and_vectorises():
    assert LossLaw.from_dict(CHINCHILLA.to_dict()) == CHINCHILLA
    task = TaskLaw(a=0.7, b=0.25, k=-3.0, L0=3.0)
    assert TaskLaw.from_dict(task.to_dict()) == task
    assert isinstance(CHINCHILLA(1e9, 2e10), float) and isinstance(task(2.5), float)
    N, D = LADDER
    assert CHINCHILLA(N, D) == pytest.approx([CHINCHILLA(n, d) for n, d in zip(N, D)])
    # By hand: 1.69 + 406.4 / 70e9**0.34 + 410.7 / 1.4e12**0.28 = 1.69 + 0.0835 + 0.1631.
    assert CHINCHILLA(70e9, 1.4e12) == pytest.approx(1.937, abs=1e-3)


TASK = TaskLaw(a=0.7, b=0.25, k=-3.0, L0=3.0)


def task_points(seed: int = 0, n: int = 25):
    loss = np.linspace(1.5, 4.5, n)  # both plateaus: from chance (0.25) up to 0.95
    acc = TASK(loss) + 0.01 * np.random.default_rng(seed).standard_normal(n)
    return loss, acc


def test_task_law_recovers_sigmoid():
    fit = fit_task_law(*task_points())
    for name in ("a", "b", "k", "L0"):
        assert relative_error(getattr(fit, name), getattr(TASK, name)) < 0.10, (name, fit)
    # Accuracy rises as loss falls, in the canonical a > 0 form.
    assert fit.a > 0 and fit.k < 0


def test_chained_accuracy_prediction():
    # The loss law is fitted to the ladder's task loss; the task law maps task loss to accuracy.
    N, D = LADDER
    task_loss = noisy(CHINCHILLA, N, D, seed=1)
    loss_law = fit_loss_law(N, D, task_loss)
    loss_boots = bootstrap_loss_laws(N, D, task_loss, n_boot=50, seed=0, center=loss_law)
    task_law = fit_task_law(*task_points())
    task_boots = bootstrap_task_laws(*task_points(), n_boot=50, seed=0)
    pred = predict_accuracy(loss_law, loss_boots, task_law, task_boots, *HELD_OUT)
    truth = TASK(CHINCHILLA(*HELD_OUT))
    assert pred.value == pytest.approx(task_law(loss_law(*HELD_OUT)))
    assert pred.low <= pred.value <= pred.high and pred.low < pred.high
    assert pred.low <= truth <= pred.high, (pred, truth)


def test_chained_interval_pairs_bootstrap_i_with_i():
    # Loss refit i gives task loss 2 or 3; task refit i is centred there, so each pair predicts
    # 0.5 exactly. Crossing them (refit 0 with refit 1) would give ~0.05 and ~0.95.
    center = LossLaw(E=2.5, A=0.0, B=0.0, alpha=0.3, beta=0.3)
    loss_boots = [LossLaw(E=2.0, A=0.0, B=0.0, alpha=0.3, beta=0.3), LossLaw(E=3.0, A=0.0, B=0.0, alpha=0.3, beta=0.3)]
    task_boots = [TaskLaw(a=1.0, b=0.0, k=-3.0, L0=2.0), TaskLaw(a=1.0, b=0.0, k=-3.0, L0=3.0)]
    pred = predict_accuracy(center, loss_boots, TaskLaw(a=1.0, b=0.0, k=-3.0, L0=2.5), task_boots, 1e9, 1e10)
    assert (pred.low, pred.value, pred.high) == pytest.approx((0.5, 0.5, 0.5))


def test_bad_input():
    N, D = LADDER
    L = CHINCHILLA(N, D)
    with pytest.raises(LmforgeError, match=r"\b4\b"):
        fit_loss_law(N[:4], D[:4], L[:4])
    bad = L.copy()
    bad[3] = -1.0
    with pytest.raises(LmforgeError, match="loss must be positive"):
        fit_loss_law(N, D, bad)
    with pytest.raises(LmforgeError, match="same length"):
        fit_loss_law(N, D[:-1], L)
    with pytest.raises(LmforgeError, match=r"\b3\b"):
        fit_task_law([2.0, 3.0, 4.0], [0.9, 0.5, 0.3])
    with pytest.raises(LmforgeError, match="no bootstrap fits"):
        predict_loss(CHINCHILLA, [], *HELD_OUT)


def test_plot_ladder_writes_png(tmp_path):
    N, D = LADDER
    L = noisy(CHINCHILLA, N, D, seed=0)
    law = fit_loss_law(N, D, L)
    points = [{"params": n, "tokens": d, "loss": loss} for n, d, loss in zip(N, D, L)]
    holdout = [{"params": HELD_OUT[0], "tokens": HELD_OUT[1], "loss": CHINCHILLA(*HELD_OUT)}]
    pred = Prediction(value=law(*HELD_OUT), low=law(*HELD_OUT) - 0.05, high=law(*HELD_OUT) + 0.08, level=0.9)
    out = plot_ladder(points, law, tmp_path / "ladder.png", holdout=holdout, predictions=[pred.to_dict()],
                      title="synthetic ladder")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
