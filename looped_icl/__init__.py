"""looped_icl: linear and looped transformers that learn preconditioned GD in context.

Modules (README "What is inside"): ``covariance`` (Sigma families), ``tasks`` / ``bartlett``
(samplers, exact chi-square and Wishart draws), ``attention`` / ``models`` (forward passes, params),
``u_block`` (Gatmiry's u), ``constructions`` (GD weights), ``losses`` and ``estimators`` (MC, exact
population loss, importance sampling), ``wishart`` (exact oracle), ``baselines`` / ``line_search``
(GD, PGD, OLS, ridge), ``theory`` (closed forms by paper), ``fields`` / ``config_lib`` / ``configs``
(the schema and the configs), ``train_step`` / ``train`` / ``workdir`` (step, trainer, workdir
contract), ``evaluate`` / ``solver``, ``sweep``, ``sharding``, ``reproduce`` (paper experiments),
``cli`` (the ``looped-icl`` command).
"""

__version__ = "0.1.0"
