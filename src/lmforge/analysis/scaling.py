"""Scaling-law fits for a model ladder: predict a large run's loss and task accuracy from small ones.

Two steps, after Bhagia et al. (2024), "Establishing Task Scaling Laws via Compute-Efficient
Model Ladders" (arXiv:2412.04403):

1. **Loss law** (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models",
   arXiv:2203.15556, approach 3): the loss of a model with N parameters trained on D tokens is

       L(N, D) = E + A / N**alpha + B / D**beta.

   Following Hoffmann, the five parameters are fitted in log space, with A = exp(a), B = exp(b),
   E = exp(e), by minimising

       sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),

   where LSE is log-sum-exp (so log L(N, D) = LSE(...) exactly, without overflow) and
   delta = 1e-3. The Huber loss makes the fit robust to the odd outlier run; in log space a
   residual is a relative error, so small and large models weigh alike. The objective is not
   convex, so L-BFGS-B is started from every point of a grid of initialisations and the best
   local minimum is kept (Hoffmann's grid: alpha, beta in {0, 0.5, ..., 2}, e in {-1, ..., 1},
   a, b in {0, 5, ..., 25}; `HOFFMANN_GRID`, 4500 starts). The default, `DEFAULT_GRID`, is a
   2-point-per-parameter sub-grid of it (32 starts), so that one fit takes a fraction of a second.

2. **Task law** (Bhagia et al., step 2): a task's accuracy is a sigmoid of the model's loss on
   that task,

       acc = a / (1 + exp(-k (L - L0))) + b,

   with k < 0 in practice (accuracy rises as loss falls); b is the accuracy floor (chance) and
   a + b the ceiling. Fitted by least squares from several starting points. For the chained
   prediction, step 1 is fitted to the *task* loss of the ladder (not the training loss).

**Uncertainty**: a nonparametric bootstrap. The ladder's points are resampled with replacement
and each law refitted; a prediction's interval is the percentile interval of the refits'
predictions. The chained accuracy interval pairs the i-th loss refit with the i-th task refit.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares, minimize
from scipy.special import expit

from lmforge.errors import LmforgeError

ArrayLike = Any  # a float or anything np.asarray turns into floats

#: Hoffmann et al.'s grid of initialisations (Appendix D.2): 5 * 5 * 5 * 6 * 6 = 4500 starts.
HOFFMANN_GRID: dict[str, tuple[float, ...]] = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
#: The default: a sub-grid of Hoffmann's, 2 values per parameter = 32 starts. Each start costs
#: ~100 L-BFGS-B iterations; on ladders like the tests' this grid reaches the same minimum as
#: Hoffmann's full grid in ~1/100 of the time.
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "alpha": (0.5, 1.5),
    "beta": (0.5, 1.5),
    "e": (-1.0, 1.0),
    "a": (5.0, 20.0),
    "b": (5.0, 20.0),
}
#: Extra starts for each bootstrap refit, beside the central fit's solution (see `bootstrap_loss_laws`).
BOOTSTRAP_GRID: dict[str, tuple[float, ...]] = {
    "alpha": (0.5,),
    "beta": (0.5,),
    "e": (-1.0, 1.0),
    "a": (10.0,),
    "b": (10.0,),
}
_GRID_KEYS = ("a", "b", "e", "alpha", "beta")  # order of the parameter vector theta
MIN_LOSS_POINTS = 5  # five parameters
MIN_TASK_POINTS = 4  # four parameters
_MAX_EXP = 700.0  # exp(709.8) overflows float64


def _exp(x: float) -> float:
    return math.exp(min(max(x, -_MAX_EXP), _MAX_EXP))


# ----------------------------------------------------------------------------- step 1: loss law


@dataclass(frozen=True)
class LossLaw:
    """L(N, D) = E + A / N**alpha + B / D**beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def __call__(self, N: ArrayLike, D: ArrayLike) -> np.ndarray | float:
        n, d = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
        # In log space, so that a huge A with a large alpha (both fine in the fit) cannot overflow.
        with np.errstate(divide="ignore", over="ignore"):
            out = (self.E + np.exp(np.log(self.A) - self.alpha * np.log(n))
                   + np.exp(np.log(self.B) - self.beta * np.log(d)))
        return float(out) if out.ndim == 0 else out

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LossLaw:
        return cls(**{k: float(d[k]) for k in ("E", "A", "B", "alpha", "beta")})

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> LossLaw:
        """From the fit's log-space vector (a, b, e, alpha, beta)."""
        a, b, e, alpha, beta = (float(x) for x in theta)
        return cls(E=_exp(e), A=_exp(a), B=_exp(b), alpha=alpha, beta=beta)

    def theta(self) -> np.ndarray:
        """The log-space vector (a, b, e, alpha, beta), e.g. to start another fit from."""
        with np.errstate(divide="ignore"):
            logs = np.log([self.A, self.B, self.E])
        return np.array([*np.maximum(logs, -_MAX_EXP), self.alpha, self.beta], dtype=np.float64)


def _as_points(name: str, x: ArrayLike) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        bad = arr[~(np.isfinite(arr) & (arr > 0))][0]
        raise LmforgeError(f"scaling fit: every {name} must be positive and finite (got {bad:g}); "
                           f"drop or fix that ladder point")
    return arr


def _check_loss_points(N: ArrayLike, D: ArrayLike, L: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d, loss = _as_points("N (params)", N), _as_points("D (tokens)", D), _as_points("loss", L)
    if not len(n) == len(d) == len(loss):
        raise LmforgeError(f"scaling fit: N, D and L must have the same length (got {len(n)}, {len(d)}, "
                           f"{len(loss)}); pass one (params, tokens, loss) triple per ladder run")
    if len(n) < MIN_LOSS_POINTS:
        raise LmforgeError(f"scaling fit: the loss law has 5 parameters and needs at least {MIN_LOSS_POINTS} "
                           f"ladder points, got {len(n)}; add more (size, tokens) runs to the ladder")
    # With one distinct N, A / N**alpha is a constant that cannot be told apart from E (same for D).
    for name, arr in (("model size N", n), ("token budget D", d)):
        if len(np.unique(arr)) < 2:
            raise LmforgeError(f"scaling fit: every ladder point has the same {name} ({arr[0]:g}); the law "
                               f"needs at least 2 distinct values of {name.split()[-1]}, better 3 or more")
    return n, d, loss


def _huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                     delta: float) -> tuple[float, np.ndarray]:
    """Hoffmann's objective and its gradient in theta = (a, b, e, alpha, beta).

    Divided by delta**2 (which moves no minimum): with delta = 1e-3 the raw sum is ~1e-4, where
    L-BFGS-B's absolute tolerances would stop it long before convergence.
    """
    a, b, e, alpha, beta = theta
    # Log-sum-exp of the three terms by hand (scipy's logsumexp costs ~3x more on 20 points, and
    # this runs ~100 times per start): shift by the largest term so no exp can overflow.
    t_n = a - alpha * log_n
    t_d = b - beta * log_d
    m = np.maximum(np.maximum(t_n, t_d), e)
    w_n, w_d, w_e = np.exp(t_n - m), np.exp(t_d - m), np.exp(e - m)
    total = w_n + w_d + w_e
    r = m + np.log(total) - log_l  # log L(N, D) - log L
    abs_r = np.abs(r)
    loss = np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta)).sum()
    # d lse / d term is that term's softmax weight; Huber'(r) = clip(r, -delta, delta).
    dr = np.clip(r, -delta, delta) / total
    g_n, g_d = w_n * dr, w_d * dr
    grad = np.array([g_n.sum(), g_d.sum(), (w_e * dr).sum(), -(g_n @ log_n), -(g_d @ log_d)])
    scale = 1.0 / (delta * delta)
    return float(loss * scale), grad * scale


def _grid_starts(grid: Mapping[str, Sequence[float]]) -> np.ndarray:
    missing = [k for k in _GRID_KEYS if k not in grid or len(grid[k]) == 0]
    if missing:
        raise LmforgeError(f"scaling fit: init_grid lacks values for {', '.join(missing)}; "
                           f"give a list for each of {', '.join(_GRID_KEYS)}")
    return np.array(list(itertools.product(*(grid[k] for k in _GRID_KEYS))), dtype=np.float64)


# alpha, beta >= 0: a loss law whose loss grows with scale is not a scaling law; the log-space
# a, b, e need no bounds (LossLaw.from_theta clips before exponentiating).
_BOUNDS = [(None, None), (None, None), (None, None), (0.0, None), (0.0, None)]
_OPTIONS = {"maxiter": 1000}


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """L-BFGS-B calls BLAS on 5-vectors thousands of times per fit; OpenBLAS waking its thread pool
    for each made fits ~10x slower on a busy machine. Limit BLAS to one thread for the fit only
    (threadpoolctl is optional: without it the fit is just slower)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _fit_from(starts: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
              delta: float) -> tuple[np.ndarray, float]:
    """Local L-BFGS-B from each start; the best minimum (the first one on a tie: deterministic)."""
    best_theta, best_f = starts[0], math.inf
    for start in starts:  # callers hold _single_threaded_blas()
        res = minimize(_huber_objective, start, args=(log_n, log_d, log_l, delta), jac=True,
                       method="L-BFGS-B", bounds=_BOUNDS, options=_OPTIONS)
        if np.isfinite(res.fun) and res.fun < best_f:
            best_theta, best_f = res.x, float(res.fun)
    if not math.isfinite(best_f):
        raise LmforgeError("scaling fit: L-BFGS-B found no finite minimum from any start; check the ladder's "
                           "losses, or pass a wider init_grid")
    return best_theta, best_f


def fit_loss_law(N: ArrayLike, D: ArrayLike, L: ArrayLike, *, huber_delta: float = 1e-3,
                 init_grid: Mapping[str, Sequence[float]] | None = None) -> LossLaw:
    """Fit L(N, D) = E + A / N**alpha + B / D**beta to a ladder (Hoffmann et al.'s approach 3).

    N: parameter counts, D: training tokens, L: final losses, one per ladder run. `init_grid`
    maps each of a, b, e, alpha, beta to its grid of starting values (`HOFFMANN_GRID` for the
    paper's; default `DEFAULT_GRID`).
    """
    n, d, loss = _check_loss_points(N, D, L)
    if not huber_delta > 0:
        raise LmforgeError(f"scaling fit: huber_delta must be > 0 (got {huber_delta})")
    starts = _grid_starts(DEFAULT_GRID if init_grid is None else init_grid)
    with _single_threaded_blas():
        theta, _ = _fit_from(starts, np.log(n), np.log(d), np.log(loss), huber_delta)
    return LossLaw.from_theta(theta)


def _resamples(n: int, n_boot: int, seed: int, min_distinct: int) -> list[np.ndarray]:
    """`n_boot` index resamples with replacement, less those with under `min_distinct` distinct points."""
    rng = np.random.default_rng(seed)
    draws = (rng.integers(0, n, size=n) for _ in range(n_boot))
    return [idx for idx in draws if len(np.unique(idx)) >= min_distinct]


def bootstrap_loss_laws(N: ArrayLike, D: ArrayLike, L: ArrayLike, *, n_boot: int = 200, seed: int = 0,
                        huber_delta: float = 1e-3, center: LossLaw | None = None) -> list[LossLaw]:
    """Refits of the loss law on `n_boot` resamples of the ladder (with replacement).

    Resamples with fewer than 5 distinct points, or a single distinct N or D, cannot determine
    the law and are skipped, so fewer than `n_boot` laws may come back. `center`: the fit on
    all points, if already computed.

    Each refit starts from the central fit's solution plus `BOOTSTRAP_GRID`'s few points rather
    than the full grid: a resample's optimum lies close to the central one, and the default grid
    for every refit would make the bootstrap ~10x slower.
    """
    n, d, loss = _check_loss_points(N, D, L)
    if center is None:
        center = fit_loss_law(n, d, loss, huber_delta=huber_delta)
    starts = np.vstack([center.theta()[None, :], _grid_starts(BOOTSTRAP_GRID)])
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    laws = []
    with _single_threaded_blas():
        for idx in _resamples(len(n), n_boot, seed, MIN_LOSS_POINTS):
            if len(np.unique(n[idx])) < 2 or len(np.unique(d[idx])) < 2:
                continue
            theta, _ = _fit_from(starts, log_n[idx], log_d[idx], log_l[idx], huber_delta)
            laws.append(LossLaw.from_theta(theta))
    return laws


# ----------------------------------------------------------------------------- step 2: task law


@dataclass(frozen=True)
class TaskLaw:
    """Accuracy as a sigmoid of task loss: acc = a / (1 + exp(-k * (L - L0))) + b (Bhagia et al. step 2;
    k < 0 expected: accuracy rises as loss falls)."""

    a: float
    b: float
    k: float
    L0: float

    def __call__(self, L: ArrayLike) -> np.ndarray | float:
        # expit(z) = 1 / (1 + exp(-z)) without overflow for any z.
        out = self.a * expit(self.k * (np.asarray(L, dtype=np.float64) - self.L0)) + self.b
        return float(out) if np.ndim(out) == 0 else out

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskLaw:
        return cls(**{k: float(d[k]) for k in ("a", "b", "k", "L0")})


def _check_task_points(task_loss: ArrayLike, accuracy: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    loss = _as_points("task loss", task_loss)
    acc = np.asarray(accuracy, dtype=np.float64).ravel()
    if not np.all(np.isfinite(acc)):
        raise LmforgeError("task law fit: every accuracy must be finite; drop or fix that ladder point")
    if len(loss) != len(acc):
        raise LmforgeError(f"task law fit: task_loss and accuracy must have the same length (got {len(loss)}, "
                           f"{len(acc)}); pass one (task loss, accuracy) pair per ladder run")
    if len(loss) < MIN_TASK_POINTS:
        raise LmforgeError(f"task law fit: the sigmoid has 4 parameters and needs at least {MIN_TASK_POINTS} "
                           f"ladder points, got {len(loss)}; add more runs to the ladder")
    if len(np.unique(loss)) < 2:
        raise LmforgeError("task law fit: all ladder points have the same task loss; the sigmoid needs a range")
    return loss, acc


def _task_residuals(p: np.ndarray, loss: np.ndarray, acc: np.ndarray) -> np.ndarray:
    a, b, k, l0 = p
    return a * expit(k * (loss - l0)) + b - acc


def _task_jacobian(p: np.ndarray, loss: np.ndarray, acc: np.ndarray) -> np.ndarray:
    a, _, k, l0 = p
    s = expit(k * (loss - l0))
    ds = s * (1.0 - s)  # d expit(z) / dz
    return np.column_stack([s, np.ones_like(s), a * ds * (loss - l0), -a * k * ds])


def _task_starts(loss: np.ndarray, acc: np.ndarray) -> list[np.ndarray]:
    """Starts spread over plausible shapes: span and floor from the data, the midpoint at the
    median loss, and slopes from gentle to steep relative to the ladder's loss range."""
    lo, hi = float(acc.min()), float(acc.max())
    span = max(hi - lo, 1e-3)
    width = float(loss.max() - loss.min())
    starts = []
    for k_scale in (1.0, 4.0, 16.0):
        for l0 in np.quantile(loss, (0.25, 0.5, 0.75)):
            starts.append(np.array([span, lo, -k_scale / width, float(l0)]))
    return starts


def _fit_task(loss: np.ndarray, acc: np.ndarray, starts: Sequence[np.ndarray]) -> TaskLaw:
    best, best_cost = None, math.inf
    for start in starts:
        res = least_squares(_task_residuals, start, jac=_task_jacobian, args=(loss, acc), method="lm",
                            xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=2000)
        if np.all(np.isfinite(res.x)) and res.cost < best_cost:
            best, best_cost = res.x, float(res.cost)
    if best is None:
        raise LmforgeError("task law fit: least squares did not converge from any start; check the accuracies")
    a, b, k, l0 = (float(x) for x in best)
    # a / (1 + e^{-k(L-L0)}) + b equals -a / (1 + e^{k(L-L0)}) + (a + b): keep the form with a > 0,
    # so that a is the accuracy span and b the floor, and k's sign says which way accuracy moves.
    if a < 0:
        a, b, k = -a, a + b, -k
    return TaskLaw(a=a, b=b, k=k, L0=l0)


def fit_task_law(task_loss: ArrayLike, accuracy: ArrayLike) -> TaskLaw:
    """Fit acc = a / (1 + exp(-k (L - L0))) + b by least squares, from several starts."""
    loss, acc = _check_task_points(task_loss, accuracy)
    return _fit_task(loss, acc, _task_starts(loss, acc))


def bootstrap_task_laws(task_loss: ArrayLike, accuracy: ArrayLike, *, n_boot: int = 200, seed: int = 0,
                        center: TaskLaw | None = None) -> list[TaskLaw]:
    """Refits of the task law on `n_boot` resamples (with replacement); resamples with fewer than 4
    distinct points or a single distinct loss are skipped. Each refit also starts from the central
    fit (`center`, computed if not given), near which a resample's optimum usually lies."""
    loss, acc = _check_task_points(task_loss, accuracy)
    if center is None:
        center = fit_task_law(loss, acc)
    center_start = np.array([center.a, center.b, center.k, center.L0])
    laws = []
    for idx in _resamples(len(loss), n_boot, seed, MIN_TASK_POINTS):
        if len(np.unique(loss[idx])) < 2:
            continue
        laws.append(_fit_task(loss[idx], acc[idx], [center_start, *_task_starts(loss[idx], acc[idx])]))
    return laws


# ----------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class Prediction:
    """The central fit's value and the bootstrap's percentile interval at `level`."""

    value: float
    low: float
    high: float
    level: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _interval(value: float, samples: Sequence[float], level: float, what: str) -> Prediction:
    if not 0 < level < 1:
        raise LmforgeError(f"{what}: level must be in (0, 1), got {level}")
    finite = np.asarray([s for s in samples if np.isfinite(s)], dtype=np.float64)
    if len(finite) == 0:
        raise LmforgeError(f"{what}: no bootstrap fits to take an interval from; run the bootstrap with "
                           f"n_boot > 0 on a ladder of at least 5 distinct points")
    low, high = np.quantile(finite, ((1 - level) / 2, (1 + level) / 2))
    # The percentile interval comes from the refits, the value from the central fit; with few or
    # skewed refits the value can fall just outside. Widen to include it: an interval that
    # excludes its own estimate is nonsense to report and breaks error bars.
    return Prediction(value=value, low=min(float(low), value), high=max(float(high), value), level=level)


def predict_loss(law: LossLaw, boots: Sequence[LossLaw], N: float, D: float, *, level: float = 0.9) -> Prediction:
    """Loss at (N, D): the central law's value, with the bootstrap laws' percentile interval."""
    return _interval(float(law(N, D)), [float(b(N, D)) for b in boots], level, "predict_loss")


def predict_accuracy(loss_law: LossLaw, loss_boots: Sequence[LossLaw], task_law: TaskLaw,
                     task_boots: Sequence[TaskLaw], N: float, D: float, *, level: float = 0.9) -> Prediction:
    """Accuracy at (N, D): task loss from the loss law (step 1), accuracy from the task law (step 2).

    The interval chains the bootstraps: refit i of step 1 feeds refit i of step 2 (as many pairs as
    the shorter list has), so both steps' uncertainty propagates to the accuracy.
    """
    value = float(task_law(loss_law(N, D)))
    samples = [float(t(lb(N, D))) for lb, t in zip(loss_boots, task_boots)]
    return _interval(value, samples, level, "predict_accuracy")


def relative_error(predicted: float, actual: float) -> float:
    """|predicted - actual| / |actual|."""
    if actual == 0:
        raise LmforgeError("relative_error: the actual value is 0, so a relative error is undefined")
    return abs(predicted - actual) / abs(actual)
