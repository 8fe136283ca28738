"""CCSD(T)/CBS valence energies of H2O and the O atom with the ccECP pseudopotential on O.

Kept for its name: the code is in ``bench/ecp_reference.py`` (H2O, the O atom and HCl; see its
docstring for the method). This runs it with ``--systems o h2o`` as the default; every option of
that script works here too.

    OMP_NUM_THREADS=1 python bench/h2o_ecp_reference.py --out runs/h2o_ecp_reference.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ecp_reference import main  # noqa: E402

if __name__ == "__main__":
    main(default_systems=("o", "h2o"))
