"""The anchor-style step: Ahn et al.'s official PyTorch training step, timed beside ours.

A reimplementation of what the official notebooks run per step (chengxiang/LinearTransformer,
``linear_transformer.py``: ``generate_data('normal', ...)``, ``Transformer_F`` with ``attention``,
``in_context_loss``; ``simple demonstration.ipynb``: AdamW with betas (0.9, 0.9), a fresh batch
every step): tokens as rows, Z = [[X, y], [x_q, 0]] of shape (B, n + 1, d + 1), each layer
Z + (Z Q~ Z^T) M (Z P~^T) / n with the last row of the mask M zero. ``looped-icl benchmark
--compare`` runs it in the same process as the ``ahn_demo`` workload, so the ratio is measured
side by side. Needs torch (``pip install "looped_icl[bench]"``), imported only here.
"""

from __future__ import annotations

import statistics
import time


def _attention(torch, p, q, z):
  b, rows, cols = z.shape
  n, d = rows - 1, cols - 1
  p_full = torch.zeros(d + 1, d + 1)
  p_full[:d, :d] = p
  p_full[d, d] = 1.0
  q_full = torch.zeros(d + 1, d + 1)
  q_full[:d, :d] = q
  mask = torch.eye(n + 1)
  mask[n, n] = 0.0
  scores = torch.einsum("BNi,ij,BMj->BNM", z, q_full, z)
  values = torch.einsum("ij,BNj->BNi", p_full, z)
  return torch.einsum("BNM,ML,BLi->BNi", scores, mask, values) / n


def _batch(torch, n: int, d: int, batch: int):
  w = torch.randn(batch, d)
  x = torch.randn(batch, n, d)
  x_test = torch.randn(batch, 1, d)
  y = torch.einsum("bi,bni->bn", w, x).unsqueeze(2)
  y_test = torch.einsum("bi,bni->bn", w, x_test).squeeze(1)
  z = torch.cat([torch.cat([x, x_test], dim=1),
                 torch.cat([y, torch.zeros(batch, 1, 1)], dim=1)], dim=2)
  return z, y_test


def steps_per_s(num_layers: int = 3, d: int = 5, n: int = 20, batch: int = 4000,
                steps_per_repeat: int = 10, repeats: int = 5, seed: int = 0) -> float:
  """Median training steps per second of the official step (sampling + forward + backward +
  AdamW) after one warm-up repeat."""
  import torch  # pylint: disable=import-outside-toplevel  (optional dependency)

  torch.manual_seed(seed)
  params = torch.nn.Parameter(1e-2 * torch.randn(num_layers, 2, d, d))
  optimizer = torch.optim.AdamW([params], lr=1e-3, betas=(0.9, 0.9), weight_decay=0.0)

  def step():
    z, y_test = _batch(torch, n, d, batch)
    for layer in range(num_layers):
      z = z + _attention(torch, params[layer, 0], params[layer, 1], z)
    loss = ((z[:, n, d] + y_test) ** 2).mean()   # the official sign: the output predicts -y
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())

  times = []
  for repeat in range(repeats + 1):
    t0 = time.perf_counter()
    for _ in range(steps_per_repeat):
      step()
    if repeat:                 # the first repeat warms up
      times.append((time.perf_counter() - t0) / steps_per_repeat)
  return 1.0 / statistics.median(times)
