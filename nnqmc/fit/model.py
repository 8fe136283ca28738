"""A fitted force field and its predictions: energy, forces and the energy's predictive
standard deviation (GP posterior), atomic units.

    E(x) = μ + c₀ + s² c(x)ᵀ α,     F(x) = -∇_x E(x),     std E(x) = √(s² k(x, x) - |L⁻¹ s² c(x)|²)

with c(x) the unit-amplitude covariance of E(x) with the training observations
(:func:`.kernel.cross`), α = (s² K₁ + Σ)⁻¹ (y - m), L the Cholesky factor of s² K₁ + Σ, μ the
prior mean energy and c₀ the integration constant of a forces-only fit (0 otherwise). The
forces are the autodiff gradient of the same energy, so the model conserves energy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .descriptor import pair_permutations
from .errors import FitError
from .kernel import cross, energy_kernel


@dataclass(frozen=True)
class Model:
    """A kernel force field (GDML form, GP posterior); atomic units throughout.

    ``permutations`` (|G|, n_atoms): the atom permutations the kernel is averaged over;
    ``sigma``: length scale on inverse distances (bohr⁻¹); ``scale``: the signal standard
    deviation s (hartree); ``mean``: prior mean energy μ (hartree); ``offset``: integration
    constant c₀ (hartree); ``energy_positions`` (n_e, n_atoms, 3), ``force_positions``
    (n_f, n_atoms, 3): the training geometries of the energy and force observations (bohr);
    ``weights`` = s² α (n_e + 3 n_atoms n_f,); ``cholesky``: L; ``info``: how it was fitted."""

    atomic_numbers: np.ndarray
    permutations: np.ndarray
    sigma: float
    scale: float
    mean: float
    offset: float
    energy_positions: np.ndarray
    force_positions: np.ndarray
    weights: np.ndarray
    cholesky: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return len(self.atomic_numbers)


def _arrays(model: Model) -> dict[str, jnp.ndarray]:
    return {
        "sigma": jnp.asarray(model.sigma, jnp.float64),
        "scale": jnp.asarray(model.scale, jnp.float64),
        "base": jnp.asarray(model.mean + model.offset, jnp.float64),
        "pair_perms": jnp.asarray(pair_permutations(model.permutations)),
        "energy_positions": jnp.asarray(model.energy_positions, jnp.float64),
        "force_positions": jnp.asarray(model.force_positions, jnp.float64),
        "weights": jnp.asarray(model.weights, jnp.float64),
        "cholesky": jnp.asarray(model.cholesky, jnp.float64),
    }


def _energy_and_cross(a: dict[str, jnp.ndarray], x: jnp.ndarray):
    c = cross(x, a["energy_positions"], a["force_positions"], a["sigma"], a["pair_perms"])
    return a["base"] + c @ a["weights"], c


@jax.jit
def _predict(a: dict[str, jnp.ndarray], positions: jnp.ndarray):
    energy = lambda x: _energy_and_cross(a, x)
    (e, c), grad = jax.vmap(jax.value_and_grad(energy, has_aux=True))(positions)
    prior = jax.vmap(lambda x: energy_kernel(x, x, a["sigma"], a["pair_perms"]))(positions)
    s2 = a["scale"] ** 2
    v = jax.scipy.linalg.solve_triangular(a["cholesky"], s2 * c.T, lower=True)
    variance = s2 * prior - jnp.sum(v * v, axis=0)
    return e, -grad, jnp.sqrt(jnp.clip(variance, 0.0, None))


def predict(model: Model, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Energy (b,) hartree, forces (b, n_atoms, 3) hartree/bohr and the energy's predictive
    standard deviation (b,) hartree of a batch of geometries ``positions`` (b, n_atoms, 3),
    bohr. For a forces-only fit the standard deviation includes that of the absolute energy
    level, which forces do not fix."""
    x = np.asarray(positions, np.float64)
    if x.ndim != 3 or x.shape[1:] != (model.n_atoms, 3):
        raise FitError(f"positions must be (batch, {model.n_atoms}, 3), got {x.shape}")
    e, f, std = _predict(_arrays(model), jnp.asarray(x))
    return np.asarray(e), np.asarray(f), np.asarray(std)


@jax.jit
def _covariance_with(a: dict[str, jnp.ndarray], positions: jnp.ndarray, x: jnp.ndarray):
    s2 = a["scale"] ** 2
    crosses = lambda y: _energy_and_cross(a, y)[1]
    c, c_x = jax.vmap(crosses)(positions), crosses(x)
    prior = jax.vmap(lambda y: energy_kernel(y, x, a["sigma"], a["pair_perms"]))(positions)
    v = jax.scipy.linalg.solve_triangular(a["cholesky"], s2 * c.T, lower=True)
    v_x = jax.scipy.linalg.solve_triangular(a["cholesky"], s2 * c_x, lower=True)
    return s2 * prior - v.T @ v_x


def posterior_covariance(model: Model, positions: np.ndarray, x: np.ndarray) -> np.ndarray:
    """cov(E(positions_i), E(x)) (b,) hartree² under the fit's posterior, for a batch of
    geometries ``positions`` (b, n_atoms, 3) and one ``x`` (n_atoms, 3), bohr:
    s² k(positions_i, x) − (L⁻¹ s² c(positions_i))ᵀ (L⁻¹ s² c(x)); at x = positions_i it is
    the square of :func:`predict`'s standard deviation."""
    y = np.asarray(positions, np.float64)
    if y.ndim != 3 or y.shape[1:] != (model.n_atoms, 3) or np.shape(x) != (model.n_atoms, 3):
        raise FitError(f"positions must be (batch, {model.n_atoms}, 3) and x ({model.n_atoms}, 3)")
    return np.asarray(_covariance_with(_arrays(model), jnp.asarray(y), jnp.asarray(x, jnp.float64)))


def energy_function(model: Model) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """E(x) of one geometry x (n_atoms, 3), bohr -> hartree, as a JAX function (jit, grad
    and vmap through it): the posterior mean of :func:`predict`, for samplers that need the
    energy inside a traced program."""
    a = _arrays(model)
    return lambda x: _energy_and_cross(a, x)[0]
