"""Closed forms, bounds and alignment metrics from the papers the toolkit reproduces (SPEC §5).

One module per paper, plus the paper-independent metrics:

* :mod:`~looped_icl.theory.ahn`: Ahn et al. 2023, the optimal single-layer preconditioner (Thm 1)
  and the isotropic GD++ loss; :mod:`~looped_icl.theory.gdpp_exact`, that loss's exact
  population value, gradient and local minima (Wishart moments, no sampling).
* :mod:`~looped_icl.theory.gatmiry`: Gatmiry et al. 2024, the gradient-dominance exponent of
  looped models and the isotropic gradient flow.
* :mod:`~looped_icl.theory.chen`, :mod:`~looped_icl.theory.chen_closed_form`: Chen et al. 2024,
  Theorem 4.5 as stated on the paper's construction (:mod:`looped_icl.chen_construction`), the
  regression-side reading of the bound, and both GDs in closed form.
* :mod:`~looped_icl.theory.metrics`: reading models as preconditioned GD, whitening, Dist(M, I).

Every public name is re-exported here (``theory.ahn_theorem1``, ``theory.dist_to_identity``, ...).
"""

from looped_icl.theory.ahn import ahn_theorem1
from looped_icl.theory.ahn import gdpp_isotropic_loss_samples
from looped_icl.theory.ahn import gdpp_isotropic_params
from looped_icl.theory.chen import BOUND_REL_TOL
from looped_icl.theory.chen import CHEN_NORMS
from looped_icl.theory.chen import ROUNDOFF_FLOOR_FACTOR
from looped_icl.theory.chen import THEOREM_4_5_CLAIMS
from looped_icl.theory.chen import THEOREM_4_5_READINGS
from looped_icl.theory.chen import ChenCheck
from looped_icl.theory.chen import ChenErrors
from looped_icl.theory.chen import chen_bound
from looped_icl.theory.chen import chen_check
from looped_icl.theory.chen import chen_fixed_errors
from looped_icl.theory.chen import chen_fixed_iterates
from looped_icl.theory.chen import chen_step_size
from looped_icl.theory.chen import generation_kappa
from looped_icl.theory.chen import theorem_4_5_checks
from looped_icl.theory.chen import theorem_4_5_counterexample
from looped_icl.theory.chen import theorem_4_5_errors
from looped_icl.theory.chen_closed_form import DISTANCE_NORMS
from looped_icl.theory.chen_closed_form import ChenEvaluation
from looped_icl.theory.chen_closed_form import ChenSpectral
from looped_icl.theory.chen_closed_form import chen_agreement
from looped_icl.theory.chen_closed_form import chen_bound_checks
from looped_icl.theory.chen_closed_form import chen_bound_per_task
from looped_icl.theory.chen_closed_form import chen_closed_form_distances
from looped_icl.theory.chen_closed_form import chen_evaluate
from looped_icl.theory.chen_closed_form import chen_loops_guarantee
from looped_icl.theory.chen_closed_form import chen_loops_to_epsilon
from looped_icl.theory.chen_closed_form import chen_observed_rate
from looped_icl.theory.chen_closed_form import chen_relative_errors
from looped_icl.theory.chen_closed_form import chen_spectral
from looped_icl.theory.chen_closed_form import chen_transformer_distances
from looped_icl.theory.chen_closed_form import generation_closed_form
from looped_icl.theory.chen_closed_form import marchenko_pastur_kappa
from looped_icl.theory.chen_closed_form import theorem_4_5_evaluate
from looped_icl.theory.chen_closed_form import theorem_4_5_summary
from looped_icl.theory.chen_closed_form import theorem_4_5_totals
from looped_icl.theory.chen_closed_form import Theorem45Evaluation
from looped_icl.theory.gatmiry import gradient_dominance_exponent
from looped_icl.theory.gatmiry import isotropic_flow_time
from looped_icl.theory.gatmiry import isotropic_gradient_dominance_mu
from looped_icl.theory.metrics import alignment_distances
from looped_icl.theory.metrics import asymmetry
from looped_icl.theory.metrics import dist_to_identity
from looped_icl.theory.metrics import effective_preconditioners
from looped_icl.theory.metrics import eigenvalues_as_pairs
from looped_icl.theory.metrics import mean_diagonal
from looped_icl.theory.metrics import sparsity_residual
from looped_icl.theory.metrics import unwhiten_preconditioner
from looped_icl.theory.metrics import whiten_preconditioner
from looped_icl.theory.metrics import whitened_scales

__all__ = [
    "ahn_theorem1", "gdpp_isotropic_loss_samples", "gdpp_isotropic_params",
    "BOUND_REL_TOL", "CHEN_NORMS", "ROUNDOFF_FLOOR_FACTOR", "THEOREM_4_5_CLAIMS",
    "THEOREM_4_5_READINGS", "ChenCheck", "ChenErrors", "chen_bound", "chen_check",
    "chen_fixed_errors", "chen_fixed_iterates", "chen_step_size", "generation_kappa",
    "theorem_4_5_checks", "theorem_4_5_counterexample", "theorem_4_5_errors",
    "DISTANCE_NORMS", "ChenEvaluation", "ChenSpectral", "chen_agreement", "chen_bound_checks",
    "chen_bound_per_task", "chen_closed_form_distances", "chen_evaluate", "chen_loops_guarantee",
    "chen_loops_to_epsilon", "chen_observed_rate", "chen_relative_errors", "chen_spectral",
    "chen_transformer_distances", "generation_closed_form", "marchenko_pastur_kappa",
    "theorem_4_5_evaluate", "theorem_4_5_summary",
    "theorem_4_5_totals", "Theorem45Evaluation",
    "gradient_dominance_exponent", "isotropic_flow_time", "isotropic_gradient_dominance_mu",
    "alignment_distances", "asymmetry", "dist_to_identity", "effective_preconditioners",
    "eigenvalues_as_pairs",
    "mean_diagonal", "sparsity_residual", "unwhiten_preconditioner", "whiten_preconditioner",
    "whitened_scales",
]
