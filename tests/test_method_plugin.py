"""The plug-in interface: a new method is one module plus one registry line, and the step,
which names no method, composes it. The toy method is a class-weighted target entropy; with
equal class weights it is ADVENT's MinEnt, which serves as its independent reference."""

import ast
import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from seat_jax import config_defaults
from seat_jax import config_validation
from seat_jax import methods
from seat_jax import optim
from seat_jax import train_step
from seat_jax.methods import base

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "seat_jax"


# The whole "module" of the new method.
@dataclasses.dataclass(frozen=True)
class WeightedEntropy(base.Method):
  needs_target_pass = True
  class_weights: tuple[float, ...] = ()

  @staticmethod
  def add_config(config):
    toy = base.section(config, "toy")
    toy.weight = 0.0  # 0 = off
    toy.class_weights = ()  # one per class; () = all 1

  @staticmethod
  def enabled(config):
    return bool(config.toy.weight)

  @staticmethod
  def problems(config):
    n = len(config.toy.class_weights)
    if n and n != config.model.num_classes:
      return [f"config.toy.class_weights has {n} values for {config.model.num_classes} classes"]
    return []

  @staticmethod
  def weights(config):
    return {"toy_weight": config.toy.weight}

  @classmethod
  def from_config(cls, config):
    return cls(class_weights=tuple(config.toy.class_weights))

  def target_terms(self, ctx):
    logits = ctx.target.main.astype(jnp.float32)
    p = jax.nn.softmax(logits, axis=-1)
    info = -p * jnp.log2(p + 1e-30) / np.log2(logits.shape[-1])
    if self.class_weights:
      info = info * jnp.asarray(self.class_weights, jnp.float32)
    value = jnp.mean(jnp.sum(info, axis=-1))
    return ctx.weights["toy_weight"] * value, {"toy_entropy": value}


@pytest.fixture
def registered(monkeypatch):
  # ... and its one registry line.
  monkeypatch.setattr(methods, "REGISTRY", methods.REGISTRY + (WeightedEntropy,))


def _config(**overrides):
  return helpers.step_config(overrides)


def _one_step(config):
  trainer = train_step.build_trainer(config)
  step = jax.jit(train_step.make_train_step(trainer.model, trainer.disc, trainer.tx,
                                            trainer.disc_tx, trainer.opts,
                                            optim.lr_schedules(config)))
  state = train_step.create_state(trainer, 0)
  return step(state, helpers.fake_step_batch(seed=0), train_step.loss_weights(config))


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


def test_a_registered_method_gets_config_validation_and_step_terms(registered):
  del registered
  assert config_defaults.get_config().toy.weight == 0.0
  bad = _config(**{"toy.weight": 0.01})
  bad.toy.class_weights = (1.0, 2.0)
  bad.init_from = "scratch"
  with pytest.raises(Exception, match="toy.class_weights has 2 values for 5 classes"):
    config_validation.validate(bad)

  toy, toy_metrics = _one_step(_config(**{"toy.weight": 0.01}))
  minent, minent_metrics = _one_step(_config(**{"loss.entropy_weight": 0.01}))
  # Equal class weights: the toy term is MinEnt's main-head term, to float32 rounding.
  np.testing.assert_allclose(float(toy_metrics["toy_entropy"]), float(minent_metrics["entropy"]),
                             rtol=1e-5)
  assert _max_diff(toy.params, minent.params) < 1e-6
  off, _ = _one_step(_config())
  assert _max_diff(toy.params, off.params) > 1e-6  # the term reaches the gradient
  skewed, _ = _one_step(_config(**{"toy.weight": 0.01, "toy.class_weights": (5.0, 1, 1, 1, 1)}))
  assert _max_diff(skewed.params, toy.params) > 1e-6


def _imported_modules(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
  return names


def test_the_step_names_no_method_and_methods_import_nothing_above_the_step():
  method_modules = {f"seat_jax.methods.{p.stem}" for p in (PACKAGE / "methods").glob("*.py")
                    if p.stem not in ("__init__", "base")}
  step_imports = _imported_modules(PACKAGE / "train_step.py")
  assert not step_imports & method_modules
  above = {"seat_jax.train", "seat_jax.train_step", "seat_jax.evaluate", "seat_jax.recipes",
           "seat_jax.presets", "seat_jax.config_validation", "seat_jax.pseudo_labels",
           "seat_jax.main", "seat_jax.demo", "seat_jax.input_pipeline"}
  for path in (PACKAGE / "methods").glob("*.py"):
    assert not _imported_modules(path) & above, path.name


def test_package_import_graph_has_no_cycle():
  modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
      ".__init__"): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    graph[name] = set()
    for node in ast.parse(path.read_text()).body:  # module-level imports only
      if isinstance(node, ast.Import):
        graph[name] |= {a.name for a in node.names if a.name in modules}
      elif isinstance(node, ast.ImportFrom) and node.module in modules:
        subs = {f"{node.module}.{a.name}" for a in node.names}
        graph[name] |= (subs & modules.keys()) or {node.module}
    graph[name].discard(name)
  done, active = set(), []

  def visit(node):
    assert node not in active, " -> ".join(active[active.index(node):] + [node])
    if node in done:
      return
    active.append(node)
    for nxt in graph[node]:
      visit(nxt)
    active.pop()
    done.add(node)

  for name in graph:
    visit(name)
