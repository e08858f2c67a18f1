"""Population-loss estimators with controlled variance: scale-mixture importance sampling of S.

The Rao-Blackwellised population loss is E_p[f(S)], S = X^T X / n with the rows of X ~ N(0, Sigma)
(:func:`looped_icl.losses.population_loss_samples` gives f). f is a polynomial of degree 2L in S,
and at L >~ 4, n/d <~ 5 its mean is carried by rare S with large eigenvalues (SPEC section 4), so
plain sampling under-estimates it and its standard error is too small.

**Proposal.** A mixture q = sum_j pi_j q_j of the laws q_j of s_j S: X drawn with covariance
s_j Sigma (s_j >= 1 inflates the tail). The density ratio of the Gaussian X is a function of
t = tr(Sigma^-1 S) only, so it holds for the Bartlett sampler (cost independent of n) and n < d:
  p / q_j = s_j^(nd/2) exp(-(n/2) (1 - 1/s_j) t).
**Estimator.** N_j = pi_j N samples are drawn from each component (deterministic, interleaved
allocation) and weighted by the balance heuristic w = p / sum_j (N_j / N) q_j (Veach and Guibas
1995): mean(w f) is unbiased for E_p f, and its variance is the stratified
sum_j (N_j / N)^2 Var_j(w f) / N_j, estimated by the within-component sample variances. A mixture
that keeps s = 1 with weight pi_0 ("defensive", Hesterberg 1995) has w <= 1 / pi_0, so it is never
worse than 1 / pi_0 times plain sampling. ``Proposal()`` (s = 1 alone) is plain Monte Carlo, the
reference.

**Choice.** :func:`choose_proposal` measures, on a pilot sample from a broad mixture, the variance
every candidate proposal would have for the given f (E_q[(w_q f)^2] = E_pilot[w_pilot w_q f^2]) and
takes the smallest; the estimate itself is then made on fresh samples, so the choice adds no bias.

**Diagnostics** (:func:`estimate`): standard error, effective sample size (sum w f)^2 / sum (w f)^2,
the largest single sample's share of sum w f, the spread of 20 contiguous chunk means, and the
Pareto tail index k of the largest w f (Zhang and Stephens 2009, as in PSIS: Vehtari et al.,
JMLR 2024). k < 0.5: finite variance, the standard error can be trusted; above
min(1 - 1 / log10 N, 0.7) the estimate is flagged (``trusted`` false, ``warning`` set).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from looped_icl import tasks as tasks_lib

NUM_CHUNKS = 20
MAX_SHARE = 0.05
# Candidate inflations of Sigma for choose_proposal (plus s = 1), and the pilot's mixture.
CANDIDATE_SCALES = tuple(float(s) for s in 1.0 + np.geomspace(0.02, 2.0, 15))
DEFENSIVE_WEIGHTS = (0.25, 0.5, 0.75)
PILOT_SCALES = (1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)


@dataclasses.dataclass(frozen=True)
class Proposal:
  """Mixture of inflated Wishart laws: component j draws X with covariance scales[j] * Sigma."""
  scales: tuple[float, ...] = (1.0,)
  weights: tuple[float, ...] = (1.0,)

  def __post_init__(self):
    scales = tuple(float(s) for s in self.scales)
    weights = tuple(float(w) for w in self.weights)
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
      raise ValueError(f"proposal scales must be finite numbers > 0, got {self.scales!r}")
    if len(weights) != len(scales) or any(not math.isfinite(w) or w <= 0 for w in weights):
      raise ValueError(f"proposal weights must be {len(scales)} numbers > 0, got {self.weights!r}")
    total = sum(weights)
    object.__setattr__(self, "scales", scales)
    object.__setattr__(self, "weights", tuple(w / total for w in weights))

  @property
  def is_plain(self) -> bool:
    return self.scales == (1.0,)

  def describe(self) -> str:
    return " + ".join(f"{w:.2f}*W({s:.3g} Sigma)" for s, w in zip(self.scales, self.weights))


PLAIN = Proposal()


def defensive(scale: float, weight: float = 0.5) -> Proposal:
  """(1 - weight) plain + weight inflated by ``scale``."""
  return Proposal((1.0, scale), (1.0 - weight, weight)) if scale != 1.0 else PLAIN


def default_proposal(task: tasks_lib.TaskDistribution) -> Proposal:
  """A defensive mixture for when no model is at hand yet (training, a solver's first fit):
  half plain, half inflated by s = 1 + 1.2 sqrt(d / n) (at most 3), the choice
  :func:`choose_proposal` measured best at d = 4, n = 20, L = 6 (s = 1.54), scaled with the
  fluctuation sqrt(d / n) of S's eigenvalues; plain for non-Gaussian designs."""
  if task.design != "gaussian":
    return PLAIN
  return defensive(float(min(1.0 + 1.2 * np.sqrt(task.d / task.n), 3.0)), 0.5)


def candidates() -> list[Proposal]:
  """The proposals :func:`choose_proposal` compares: plain and defensive mixtures (weight >= 1/4
  on s = 1, so w <= 4 and the variance is at most 4x plain's, whatever f). A single inflated law
  has weights up to s^(nd/2) where t is small: its exact variance (:mod:`looped_icl.wishart`) at
  d = 4, n = 20, L = 6 is 58x below plain's at s = 1.2 but 38x above it at s = 1.8."""
  return [PLAIN] + [defensive(s, w) for s in CANDIDATE_SCALES for w in DEFENSIVE_WEIGHTS]


def allocation(num: int, proposal: Proposal) -> np.ndarray:
  """Component index of each of ``num`` samples, (num,): N_j ~ pi_j num, evenly interleaved so
  that every contiguous chunk holds the mixture's proportions."""
  counts = np.floor(np.asarray(proposal.weights) * num).astype(int)
  for j in np.argsort(-(np.asarray(proposal.weights) * num - counts))[:num - counts.sum()]:
    counts[j] += 1
  if np.any(counts == 0):
    raise ValueError(f"num={num} samples cannot hold every component of {proposal.describe()}")
  positions = np.concatenate([(np.arange(c) + 0.5) / c for c in counts])
  components = np.repeat(np.arange(len(counts)), counts)
  return components[np.argsort(positions, kind="stable")]


@struct.dataclass
class WeightedS:
  """Samples of S with importance weights: E_p f = E[mean(weight * f(s))].

  s: (N, d, d); weight: p / q per sample, (N,); component: the mixture component of each sample,
  (N,) int (for the stratified standard error).
  """
  s: jax.Array
  weight: jax.Array
  component: jax.Array


def mixture_weights(t_S, n: int, d: int, proposal: Proposal) -> np.ndarray:
  """Balance-heuristic weights p / sum_j pi_j q_j, (N,), from t = tr(Sigma^-1 S) (NumPy):
  log(q_j / p) = -(nd/2) log s_j + (n/2)(1 - 1/s_j) t."""
  s_J = np.asarray(proposal.scales)
  log_q_SxJ = ((-(n * d / 2.0) * np.log(s_J) + np.log(np.asarray(proposal.weights)))[None, :]
               + ((n / 2.0) * (1.0 - 1.0 / s_J))[None, :] * np.asarray(t_S)[:, None])
  top_S = np.max(log_q_SxJ, axis=1)
  return np.exp(-top_S - np.log(np.sum(np.exp(log_q_SxJ - top_S[:, None]), axis=1)))


def _check_task(task: tasks_lib.TaskDistribution, proposal: Proposal) -> None:
  tasks_lib.require_one_covariance(task, "the population loss")
  if not proposal.is_plain and task.design != "gaussian":
    raise ValueError(f"task.design must be 'gaussian' for an importance-sampling proposal (the "
                     f"density ratio is Gaussian), got {task.design!r}; use the plain proposal")


def sample(key: jax.Array, task: tasks_lib.TaskDistribution, num: int,
           proposal: Proposal = PLAIN) -> WeightedS:
  """Draws ``num`` weighted samples of S from ``proposal`` (plain: weights 1).

  The plain draw (``tasks.sample_empirical_covariance``, ~1.5-2 s to compile: its chi-square
  rejection loop) is compiled once per ``num`` whatever the proposal; the proposal enters as
  arrays in :func:`reweight`'s small program.
  """
  return reweight(tasks_lib.sample_empirical_covariance(key, task, num), task, proposal)


@jax.jit
def _scaled_and_weighted(s_SxDxD, cov, scale_S, const_J, slope_J):
  s_SxDxD = s_SxDxD * scale_S[:, None, None]
  t_S = jnp.einsum("ij,bji->b", jnp.linalg.inv(cov), s_SxDxD)
  log_q_SxJ = const_J[None, :] + slope_J[None, :] * t_S[:, None]
  return s_SxDxD, jnp.exp(-jax.scipy.special.logsumexp(log_q_SxJ, axis=1))


def reweight(s_SxDxD: jax.Array, task: tasks_lib.TaskDistribution,
             proposal: Proposal = PLAIN) -> WeightedS:
  """Turns plain samples of S (drawn from the task's law) into samples from ``proposal``: sample
  i is scaled by its component's s_j (X with covariance s_j Sigma) and weighted by the balance
  heuristic (:func:`mixture_weights`)."""
  _check_task(task, proposal)
  num, dtype = s_SxDxD.shape[0], s_SxDxD.dtype
  components = allocation(num, proposal)
  if proposal.is_plain:
    return WeightedS(s=s_SxDxD, weight=jnp.ones((num,), dtype),
                     component=jnp.asarray(components))
  n, d, s_J = task.n, task.d, np.asarray(proposal.scales)
  const_J = -(n * d / 2.0) * np.log(s_J) + np.log(np.asarray(proposal.weights))
  slope_J = (n / 2.0) * (1.0 - 1.0 / s_J)
  s_SxDxD, weight_S = _scaled_and_weighted(
      s_SxDxD, task.cov, jnp.asarray(s_J[components], dtype), jnp.asarray(const_J, dtype),
      jnp.asarray(slope_J, dtype))
  return WeightedS(s=s_SxDxD, weight=weight_S, component=jnp.asarray(components))


def weighted_mean(values_S, weighted: WeightedS) -> jax.Array:
  """The unbiased estimate mean(weight * f) (traceable; the training objective)."""
  weight = weighted.weight.reshape(weighted.weight.shape + (1,) * (values_S.ndim - 1))
  return jnp.mean(weight * values_S, axis=0)


def _weights_and_components(num: int, weighted: WeightedS | None):
  """(weight_S, component_S) of ``weighted``'s samples (plain: weights 1, one component)."""
  if weighted is None:
    return np.ones(num), np.zeros(num, int)
  return np.asarray(weighted.weight, np.float64), np.asarray(weighted.component)


def _stratified_stderrs(y_SxK: np.ndarray, component_S: np.ndarray) -> np.ndarray:
  """The stratified standard error of the mean of each column of ``y_SxK``, (K,)."""
  num = y_SxK.shape[0]
  var_K = np.zeros(y_SxK.shape[1:])
  for j in np.unique(component_S):
    y_j = y_SxK[component_S == j]
    if y_j.shape[0] > 1:
      var_K += (y_j.shape[0] / num) ** 2 * y_j.var(axis=0, ddof=1) / y_j.shape[0]
  return np.sqrt(var_K)


def _stratified_stderr(y_S: np.ndarray, component_S: np.ndarray) -> float:
  return float(_stratified_stderrs(y_S[:, None], component_S)[0])


def mean_and_stderrs(values_SxK, weighted: WeightedS | None = None):
  """Column-wise mean(weight * f) and its stratified standard error, each (K,): one estimate
  per column of ``values_SxK`` (e.g. the entries of a per-sample gradient)."""
  f_SxK = np.asarray(values_SxK, np.float64)
  weight_S, component_S = _weights_and_components(f_SxK.shape[0], weighted)
  y_SxK = weight_S[:, None] * f_SxK
  return y_SxK.mean(axis=0), _stratified_stderrs(y_SxK, component_S)


def pareto_tail_index(values) -> float:
  """Shape k of a generalised Pareto fit to the largest values (Zhang and Stephens 2009).

  The tail is the top min(N / 5, 3 sqrt(N)) values above the next one (PSIS's choice), with the
  weakly informative prior of Vehtari et al. (2024). k < 0.5: finite variance; k > 0.7: the
  mean's estimate is unreliable. NaN when fewer than 10 tail values are positive.
  """
  x = np.sort(np.asarray(values, np.float64).ravel())
  num = x.shape[0]
  tail = int(min(0.2 * num, 3 * np.sqrt(num)))
  if tail < 10:
    return float("nan")
  exceed = x[-tail:] - x[-tail - 1]
  exceed = exceed[exceed > 0]
  m = exceed.shape[0]
  if m < 10:
    return float("nan")
  m_est = 30 + int(np.sqrt(m))
  b = 1 - np.sqrt(m_est / (np.arange(1, m_est + 1) - 0.5))
  b = b / (3 * exceed[int(m / 4 + 0.5) - 1]) + 1 / exceed[-1]
  k = np.log1p(-b[:, None] * exceed).mean(axis=1)
  log_lik = m * (np.log(-(b / k)) - k - 1)
  weights = np.exp(log_lik - log_lik.max())
  weights = weights / weights.sum()
  keep = weights >= 10 * np.finfo(float).eps
  weights, b = weights[keep] / weights[keep].sum(), b[keep]
  k_post = np.log1p(-np.sum(b * weights) * exceed).mean()
  return float((m * k_post + 10 * 0.5) / (m + 10))


def tail_threshold(num: int) -> float:
  """Largest trustworthy Pareto k for ``num`` samples: min(1 - 1 / log10 N, 0.7)."""
  return float(min(1 - 1 / np.log10(max(num, 11)), 0.7))


def estimate(values_S, weighted: WeightedS | None = None) -> dict:
  """Value, standard error and tail diagnostics of mean(weight * f) (JSON-ready floats).

  ``values_S``: f per sample, (N,) (a loss, or a paired difference of losses); ``weighted``: the
  samples' weights (None: plain, weights 1).
  """
  f_S = np.asarray(values_S, np.float64)
  if f_S.ndim != 1:
    raise ValueError(f"values must be one number per sample, got shape {f_S.shape}")
  num = f_S.shape[0]
  weight_S, component_S = _weights_and_components(num, weighted)
  y_S = weight_S * f_S
  value = float(y_S.mean())
  stderr = _stratified_stderr(y_S, component_S)
  abs_y = np.abs(y_S)
  # Contiguous chunks: the allocation interleaves the components, so each holds the mixture's
  # proportions (a strided chunk could hold one component only).
  chunk_means = np.array([c.mean() for c in np.array_split(y_S, NUM_CHUNKS)])
  out = {
      "value": value,
      "stderr": stderr,
      "samples": num,
      "ess": float(abs_y.sum() ** 2 / max(np.sum(abs_y**2), 1e-300)),
      "max_share": float(abs_y.max() / max(abs_y.sum(), 1e-300)),
      "chunk_mean_min": float(chunk_means.min()),
      "chunk_mean_max": float(chunk_means.max()),
      "tail_index": pareto_tail_index(abs_y),
  }
  problems = []
  if out["tail_index"] > tail_threshold(num):
    problems.append(f"Pareto tail index {out['tail_index']:.2f} > {tail_threshold(num):.2f}")
  if out["max_share"] > MAX_SHARE:
    problems.append(f"one sample carries {100 * out['max_share']:.0f}% of the mean")
  out["trusted"] = not problems
  out["warning"] = ("heavy tail, the standard error is not reliable: " + "; ".join(problems)
                    if problems else "")
  return out


def mean_and_stderr(values, *, axis: int = 0, ddof: int = 1):
  """Plain Monte Carlo mean of i.i.d. draws along ``axis`` and its standard error
  std(ddof) / sqrt(N), in float64: floats for 1-D ``values``, arrays otherwise.

  For importance-weighted samples use :func:`estimate` (stratified standard error, diagnostics).
  """
  x_N = np.asarray(values, np.float64)
  mean = x_N.mean(axis=axis)
  stderr = x_N.std(axis=axis, ddof=ddof) / np.sqrt(x_N.shape[axis])
  if np.ndim(mean) == 0:
    return float(mean), float(stderr)
  return mean, stderr


def paired_ratio(num_S, den_S, weighted: WeightedS | None = None) -> tuple[float, float]:
  """mean(w num) / mean(w den) of two losses on the same samples, and its delta-method standard
  error (stratified like :func:`estimate`; plain samples when ``weighted`` is None)."""
  num_S, den_S = np.asarray(num_S, np.float64), np.asarray(den_S, np.float64)
  weight_S, component_S = _weights_and_components(num_S.shape[0], weighted)
  mean_num, mean_den = np.mean(weight_S * num_S), np.mean(weight_S * den_S)
  ratio = mean_num / mean_den
  resid_S = weight_S * (num_S / mean_num - den_S / mean_den)
  return float(ratio), float(ratio * _stratified_stderr(resid_S, component_S))


def weighted_quantile(values_S, q: float, weighted: WeightedS | None = None) -> float:
  """The q-quantile of f under p from weighted samples (the plain quantile when unweighted)."""
  f_S = np.asarray(values_S, np.float64)
  if weighted is None:
    return float(np.quantile(f_S, q))
  order = np.argsort(f_S)
  cum = np.cumsum(np.asarray(weighted.weight, np.float64)[order])
  return float(f_S[order][min(np.searchsorted(cum, q * cum[-1]), f_S.shape[0] - 1)])


def format_estimate(est: dict) -> str:
  """'0.0858 +- 0.0007 (ess 4.1e+04, max share 0.1%, tail k 0.21)' and the warning if any."""
  text = (f"{est['value']:.6g} +- {est['stderr']:.2g} (ess {est['ess']:.3g}, max share "
          f"{100 * est['max_share']:.2g}%, tail k {est['tail_index']:.2f})")
  return text + (f" WARNING {est['warning']}" if est["warning"] else "")


def candidate_variances(f_S, pilot: WeightedS, n: int, d: int, t_S,
                        proposals: list[Proposal]) -> np.ndarray:
  """Estimated per-sample variance Var_q(w_q f) of each proposal, from a pilot sample (module doc).

  ``t_S`` = tr(Sigma^-1 S) of the pilot samples.
  """
  f_S = np.asarray(f_S, np.float64)
  w_pilot = np.asarray(pilot.weight, np.float64)
  mean = np.mean(w_pilot * f_S)
  out = []
  for proposal in proposals:
    w_q = mixture_weights(np.asarray(t_S, np.float64), n, d, proposal)
    out.append(np.mean(w_pilot * w_q * f_S**2) - mean**2)
  return np.asarray(out)


def choose_proposal(per_sample_fn, key: jax.Array, task: tasks_lib.TaskDistribution, *,
                    pilot_samples: int = 20000) -> tuple[Proposal, dict]:
  """The candidate proposal of least measured variance for ``per_sample_fn`` (s -> f, (N,)).

  Returns (proposal, info): info has the chosen proposal, its estimated variance reduction over
  plain sampling at equal sample count, and the pilot's size. Non-Gaussian designs get the plain
  proposal (no density ratio).
  """
  if task.design != "gaussian":
    return PLAIN, {"proposal": PLAIN.describe(), "variance_reduction": 1.0, "pilot_samples": 0}
  pilot_proposal = Proposal(PILOT_SCALES, (1.0,) * len(PILOT_SCALES))
  pilot = sample(key, task, pilot_samples, pilot_proposal)
  f_S = np.asarray(per_sample_fn(pilot.s), np.float64)
  t_S = np.einsum("ij,bji->b", np.linalg.inv(np.asarray(task.cov, np.float64)),
                  np.asarray(pilot.s, np.float64))
  proposals = candidates()
  variances = candidate_variances(f_S, pilot, task.n, task.d, t_S, proposals)
  best = int(np.argmin(variances))
  reduction = float(variances[0] / variances[best]) if variances[best] > 0 else float("inf")
  return proposals[best], {"proposal": proposals[best].describe(),
                           "proposal_scales": list(proposals[best].scales),
                           "proposal_weights": list(proposals[best].weights),
                           "variance_reduction": reduction, "pilot_samples": pilot_samples}
