"""Write a value to memory once on the CPU, so XLA:CPU cannot recompute it in every consumer.

Why: XLA:CPU (jax 0.10.2) fuses elementwise producers into each of their consumers and
duplicates them freely. The ResNet's residual stream, relu(bn(conv) + previous block's
output), is such a chain: every fusion that reads a block's output (the next block's dot
input, its residual add, the ReLU masks and the transposed copies of the backward pass)
recomputed the stream from the start of the stage, until a fusion reached XLA's operand limit
(~120 operands, 23 layer3 blocks). An optimisation barrier does not stop this, as XLA:CPU
expands barriers before fusing. A conditional does: XLA cannot fuse through one, and it
cannot drop this one, because its two branches are not the same computation (one returns the
value, the other the value behind an optimisation barrier) and its predicate is data. Both
branches return the value unchanged, so the result is exact. Full ResNet-101 iteration at
128x256 on 2 cores: 2.24 -> 2.02 s (benchmarks/RESULTS.md, 2026-12-04). On other platforms it
is the identity (`lax.platform_dependent`), so GPU programs are unchanged.
"""

import jax.numpy as jnp
from jax import lax


def _conditional_copy(x):
  first = x[(0,) * x.ndim]
  return lax.cond(first == first, lambda v: v, lax.optimization_barrier, x)


def materialise(x: jnp.ndarray) -> jnp.ndarray:
  """x itself; on the CPU, computed once into its own buffer."""
  return lax.platform_dependent(x, cpu=_conditional_copy, default=lambda v: v)
