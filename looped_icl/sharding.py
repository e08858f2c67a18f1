"""Data parallelism with ``jax.sharding``: one mesh axis, ``data``, over every device.

Training is data parallel: the parameters and optimizer state are replicated, and the batch of
tasks (or samples of S) of every step is split over the mesh. The batch is drawn inside the
jitted step from one key, as on one device, and then constrained to the mesh; with JAX's
partitionable threefry (the default) each device (each process, on several hosts) draws only its
own slice, and the numbers do not depend on the number of devices or hosts. A vmapped sweep
instead splits its runs over the mesh when their number is a multiple of the device count (each
device trains whole runs), else it splits every run's batch.

With several processes (``jax.distributed.initialize``, see :func:`initialize_multihost`) the
mesh spans all of them; ``jax.devices()`` is then global.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

AXIS = "data"


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``data`` over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a training program's arrays live on ``mesh``.

  ``split_runs``: a vmapped group of runs is split over the mesh (leading axis of the state);
  otherwise the state is replicated and each step's batch is split.
  """
  mesh: Mesh
  split_runs: bool = False

  @property
  def size(self) -> int:
    return self.mesh.size

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def state(self) -> NamedSharding:
    """Sharding of params / optimizer state / per-run hyperparameters (leading axis: runs)."""
    return NamedSharding(self.mesh, PartitionSpec(AXIS) if self.split_runs else PartitionSpec())

  def constrain_batch(self, tree, batch_size: int):
    """Splits every leaf whose leading axis is the batch over the mesh (inside jit)."""
    if self.size == 1 or self.split_runs or batch_size % self.size:
      return tree
    spec = NamedSharding(self.mesh, PartitionSpec(AXIS))

    def constrain(x):
      if getattr(x, "ndim", 0) and x.shape[0] == batch_size:
        return jax.lax.with_sharding_constraint(x, spec)
      return x

    return jax.tree.map(constrain, tree)


def layout_for(num_runs: int | None, mesh: Mesh | None = None) -> Layout:
  """The layout of one run (``num_runs`` None) or of a vmapped group of ``num_runs`` runs."""
  mesh = data_mesh() if mesh is None else mesh
  # Several processes: runs stay replicated (the trainer reads and checkpoints each run's
  # state on every process); the batch is split.
  split_runs = (num_runs is not None and mesh.size > 1 and num_runs % mesh.size == 0
                and jax.process_count() == 1)
  return Layout(mesh, split_runs)


def put(tree, sharding: NamedSharding):
  """Places host/device arrays on ``sharding`` (the same values on every process)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]),
      tree)


def initialize_multihost(coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None) -> None:
  """``jax.distributed.initialize``: explicit coordinator/process flags, or (all None) JAX's
  auto-detection on Cloud TPU, SLURM and other supported clusters."""
  kwargs = {k: v for k, v in (("coordinator_address", coordinator_address),
                               ("num_processes", num_processes), ("process_id", process_id))
            if v is not None}
  jax.distributed.initialize(**kwargs)


def is_primary() -> bool:
  """Whether this process writes the shared outputs (metrics, summaries, figures)."""
  return jax.process_index() == 0
