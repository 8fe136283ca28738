"""Thermal geometries of a fitted force field: Langevin MD (:mod:`.md`) and a Boltzmann
generator (:mod:`.flow`) over Z-matrix coordinates (:mod:`.zmatrix`), importance weights
and the effective sample size (:mod:`.weights`), ``nnqmc sample`` (:mod:`.sample`, files
:mod:`.store`, picture :mod:`.plot`). Neither is imported with ``import nnqmc``: flowjax
(a core dependency, in pyproject) when a flow is first built, ASE (optional: MD and
extxyz) when first needed."""

from .weights import Average, effective_sample_size, normalised_weights, weighted_mean

__all__ = ["PACKAGES", "Average", "effective_sample_size", "normalised_weights", "weighted_mean"]

# The pip package that provides each module the samplers import on first use.
PACKAGES = {"flowjax": "flowjax", "equinox": "flowjax", "paramax": "flowjax", "ase": "ase"}
