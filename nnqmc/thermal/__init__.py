"""Thermal geometries of a fitted force field: Langevin MD (:mod:`.md`) and a Boltzmann
generator (:mod:`.flow`) over Z-matrix coordinates (:mod:`.zmatrix`), importance weights
and the effective sample size (:mod:`.weights`), ``nnqmc sample`` (:mod:`.sample`, files
:mod:`.store`, picture :mod:`.plot`). flowjax and ASE are imported on first use."""

from .weights import Average, effective_sample_size, normalised_weights, weighted_mean

__all__ = ["Average", "effective_sample_size", "normalised_weights", "weighted_mean"]
