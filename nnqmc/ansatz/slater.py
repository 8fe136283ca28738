"""The determinant part shared by every ansatz: HF/CASSCF orbitals at electron positions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..orbitals import CUSP_RC_Z, ao_tables, cusp_radii, orbital_arrays, orbitals_from_arrays
from ..scf import SCFResult


@dataclass(frozen=True)
class SlaterPart:
    """Orbital functions per spin and, per determinant, which of their columns are occupied."""

    orbitals_up: Callable[[jax.Array], jax.Array]
    orbitals_down: Callable[[jax.Array], jax.Array]
    occ_up: np.ndarray  # (n_det, n_up) columns of orbitals_up
    occ_down: np.ndarray  # (n_det, n_down)
    ci: np.ndarray
    n_up: int
    n_down: int

    def matrices(self, r: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(n_det, n_up, n_up) and (n_det, n_down, n_down) matrices phi_mu(r_i), i = row."""
        up = self.orbitals_up(r[: self.n_up])[:, self.occ_up]  # (n_up, n_det, n_up)
        down = self.orbitals_down(r[self.n_up :])[:, self.occ_down]
        return jnp.moveaxis(up, 1, 0), jnp.moveaxis(down, 1, 0)


def _used_columns(occ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used = np.unique(occ)
    remap = np.searchsorted(used, occ)
    return used, remap


def slater_arrays(
    scf: SCFResult, charges: np.ndarray, cusp: bool = True, cusp_radius: float = CUSP_RC_Z
) -> dict[str, Any]:
    """The geometry-dependent constants of the determinant part (NumPy): per spin, the
    orbitals' :func:`~nnqmc.orbitals.orbital_arrays` for the occupied columns, their nuclear
    cusps corrected within ``cusp_radius / Z`` of each nucleus
    (:func:`~nnqmc.orbitals.cusp_radii`)."""
    used_up, _ = _used_columns(scf.occ_up)
    used_down, _ = _used_columns(scf.occ_down)
    rc = cusp_radii(scf.basis.centers, charges, cusp_radius)
    arrays = {"up": orbital_arrays(scf.basis, scf.mo_up[:, used_up], charges, cusp, rc=rc)}
    if used_down.size:
        mo_down = scf.mo_down[:, used_down]
        arrays["down"] = orbital_arrays(scf.basis, mo_down, charges, cusp, rc=rc)
    return arrays


def slater_from_arrays(scf: SCFResult, arrays: dict[str, Any], dtype=jnp.float64) -> SlaterPart:
    """The determinant part with its orbitals built from ``arrays`` (:func:`slater_arrays`
    of this or another geometry of the same molecule, possibly traced); ``scf`` supplies
    what does not change with the geometry: basis functions, occupations, CI coefficients."""
    tables = ao_tables(scf.basis)
    _, occ_up = _used_columns(scf.occ_up)
    _, occ_down = _used_columns(scf.occ_down)
    orb_up = orbitals_from_arrays(tables, arrays["up"], dtype)
    if "down" in arrays:
        orb_down = orbitals_from_arrays(tables, arrays["down"], dtype)
    else:
        orb_down = lambda r: jnp.zeros((r.shape[0], 0), r.dtype)
    return SlaterPart(
        orb_up,
        orb_down,
        occ_up,
        occ_down,
        np.asarray(scf.ci),
        scf.occ_up.shape[1],
        scf.occ_down.shape[1],
    )


def slater_part(
    scf: SCFResult, charges: np.ndarray, cusp: bool = True, dtype=jnp.float64
) -> SlaterPart:
    """The determinant part of ``scf`` at its own geometry."""
    return slater_from_arrays(scf, slater_arrays(scf, charges, cusp), dtype)
