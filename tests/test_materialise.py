"""`materialise` is the identity, in value and gradient, and a conditional only on the CPU."""

import jax
import jax.numpy as jnp
import numpy as np

from seat_jax.models.materialise import materialise


def test_value_and_gradient_are_the_identity_even_for_nan():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32))
  np.testing.assert_array_equal(jax.jit(materialise)(x), x)
  with_nan = x.at[0, 0, 0, 0].set(jnp.nan)  # the predicate reads this element
  np.testing.assert_array_equal(jax.jit(materialise)(with_nan), with_nan)
  grad = jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(materialise(v)))))(x)
  np.testing.assert_array_equal(grad, jnp.cos(x))
  assert jax.jit(materialise)(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_a_conditional_on_the_cpu_only():
  traced = jax.jit(lambda v: jnp.maximum(materialise(v * 2.0), 0.0)).trace(jnp.ones((4, 4)))
  cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
  cuda = traced.lower(lowering_platforms=("cuda",)).as_text()
  # the data predicate (x[0] == x[0]) and the barrier branch exist for the CPU only
  assert "stablehlo.compare" in cpu and "optimization_barrier" in cpu
  assert "stablehlo.compare" not in cuda and "optimization_barrier" not in cuda


def test_xla_cpu_keeps_the_conditional():
  """The point of the function: after XLA's simplifications a conditional is still there, so
  the stream is written once (a merged or dropped conditional would bring back the fusion of
  every earlier block into each consumer)."""
  compiled = jax.jit(lambda v: jnp.maximum(materialise(v * 2.0), 0.0)).lower(
      jnp.ones((4, 4))).compile()
  assert " conditional(" in compiled.as_text()
