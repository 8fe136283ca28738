"""PES datasets for force-field training: geometry scans with warm starts, forces, one
HDF5 dataset per scan, shards and merging, and exports (extxyz, sGDML npz, ASE db).

    nnqmc scan FILE.toml [--out DIR] [--set k=v ...] [--shard i/n] [--cold] [--from DIR]
    nnqmc merge OUT.h5 SHARD.h5 ...
    nnqmc export DATASET.h5 --format extxyz|npz|db [--out PATH]
    nnqmc bench-scan FILE.toml --cold B,... --warm B,... [--tolerance MHA]

The scan directory (default ``runs/<name>-scan``) holds ``scan.h5`` (or
``scan.shard-i-of-n.h5``), ``pes.png`` and one run directory ``geom-NNNN`` per geometry.
The dataset schema is in docs/pes.md ("The dataset"); the force estimator in
:mod:`nnqmc.pes.forces`; the geometry generators in :mod:`nnqmc.pes.geometry`; the
warm-against-cold study in :mod:`nnqmc.pes.study`.
"""

from .dataset import Dataset, DatasetError, merge, read_dataset, write_dataset
from .export import BOHR_ANGSTROM, HARTREE_EV, export
from .forces import force_observables, forces_from_records, nuclear_forces
from .geometry import GeometryError, generate
from .scan import Shard, run_scan

__all__ = [
    "BOHR_ANGSTROM",
    "HARTREE_EV",
    "Dataset",
    "DatasetError",
    "GeometryError",
    "Shard",
    "export",
    "force_observables",
    "forces_from_records",
    "generate",
    "merge",
    "nuclear_forces",
    "read_dataset",
    "run_scan",
    "write_dataset",
]
