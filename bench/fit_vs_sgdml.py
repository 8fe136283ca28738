"""``nnqmc fit`` (forces only, GDML) against sGDML's own GDML on the same noise-free data.

    python bench/fit_vs_sgdml.py --sgdml-python /tmp/sgdml_venv/bin/python
        [--train 20] [--test 40] [--sigma 2] [--basis cc-pvdz] [--out DIR]

Makes a noise-free H2 curve (PySCF RHF energies and analytic gradients, --train bond lengths
evenly from 1.0 to 4.0 bohr, --test others in between), writes both as nnqmc datasets
(error bars 0) and exports them with ``nnqmc export --format npz`` (the sGDML layout, Å and
eV). sGDML, in its own environment (it needs ``numpy<2.4``: ``python3 -m venv
/tmp/sgdml_venv && /tmp/sgdml_venv/bin/pip install sgdml "numpy<2.4"``), trains with
``sgdml all train.npz N_TRAIN 5 N_TEST -v valid.npz -t test.npz -s SIGMA --gdml --cpu``
(every training geometry, one σ, no symmetries; its log in DIR/sgdml.log) and predicts the
test geometries; ``nnqmc fit train.h5
--use forces --sigma σ' --valid 0 --no-symmetry`` fits the same geometries with the same
length scale, converted to our descriptor (σ' = σ · 0.529177 bohr⁻¹: sGDML's inverse
distances are in Å⁻¹). Prints and writes (DIR/result.json) the largest differences of the
two models' energies and forces on the test geometries as a fraction of the test labels'
range, and each model's largest error against the exact labels.

sGDML checks each dataset's ``md5`` (``sgdml.utils.io.dataset_md5``: the MD5 of the MD5
digests of z, R, E and F, stored as bytes); if the exported file's differs, this script
rewrites it the way sGDML computes it and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

VALID = 5  # sGDML's validation geometries (one σ: nothing to select)
SGDML_PREDICT = """
import sys
import numpy as np
from sgdml.predict import GDMLPredict
model = dict(np.load(sys.argv[1], allow_pickle=True))
test = np.load(sys.argv[2])
R = test["R"].reshape(len(test["R"]), -1)
E, F = GDMLPredict(model, use_torch=False).predict(R)
np.savez(sys.argv[3], E=E, F=F.reshape(test["R"].shape), sig=model["sig"],
         idxs_train=model["idxs_train"], c=model["c"])
"""


def rhf_curve(r: np.ndarray, basis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (n, 2, 3) bohr, RHF energies (n,) hartree, forces (n, 2, 3) hartree/bohr."""
    from pyscf import gto, lib, scf

    positions = np.zeros((len(r), 2, 3))
    positions[:, 1, 2] = r
    energy, forces = [], []
    for x in positions:
        mol = gto.M(atom=[("H", tuple(a)) for a in x], unit="Bohr", basis=basis, verbose=0)
        with lib.with_omp_threads(1):
            mf = scf.RHF(mol)
            energy.append(mf.kernel())
            forces.append(-mf.nuc_grad_method().kernel())
    return positions, np.array(energy), np.array(forces)


def noise_free_dataset(positions, energy, forces):
    """An nnqmc dataset, every row done, error bars 0."""
    from nnqmc.pes.dataset import new_dataset

    r = np.linalg.norm(positions[:, 1] - positions[:, 0], axis=-1)
    data = new_dataset(np.array([1, 1]), positions, r[:, None], {"name": "h2-rhf"}, True, False)
    for k in range(len(r)):
        data.set_row(
            k,
            energy=energy[k],
            energy_err=0.0,
            forces=forces[k],
            forces_err=np.zeros((2, 3)),
            status="done",
        )
    return data


def sgdml_md5(arrays) -> bytes:
    """The fingerprint sGDML computes (sgdml.utils.io.dataset_md5): MD5 over the MD5
    digests of the flattened z, R, E (if present) and F, as hex bytes."""
    h = hashlib.md5()
    for key in ("z", "R", "E", "F"):
        if key in arrays:
            h.update(hashlib.md5(np.ascontiguousarray(arrays[key]).ravel()).digest())
    return h.hexdigest().encode()


def export_npz(data, path: Path) -> bool:
    """``nnqmc export --format npz``; True if the md5 had to be rewritten for sGDML."""
    from nnqmc.pes import export

    export(data, "npz", path)
    arrays = dict(np.load(path))
    wanted = sgdml_md5(arrays)
    if arrays["md5"].dtype.kind == "S" and arrays["md5"].item() == wanted:
        return False
    arrays["md5"] = np.array(wanted)
    np.savez(path, **arrays)
    return True


def run(command: list[str], cwd: Path) -> str:
    print("$ " + " ".join(shlex.quote(c) for c in command), flush=True)
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sgdml-python", required=True, help="python of sGDML's venv")
    parser.add_argument("--train", type=int, default=20, help="training geometries (20)")
    parser.add_argument("--test", type=int, default=40, help="test geometries (40)")
    parser.add_argument("--sigma", type=int, default=2, help="sGDML's σ, 1/Å, an integer (2)")
    parser.add_argument("--basis", default="cc-pvdz")
    parser.add_argument("--out", help="work directory (default: a new temporary one)")
    args = parser.parse_args()

    from nnqmc.cli import main as nnqmc_main
    from nnqmc.fit import load_model, predict
    from nnqmc.pes import BOHR_ANGSTROM, HARTREE_EV

    out = Path(args.out or tempfile.mkdtemp(prefix="fit_vs_sgdml_"))
    out.mkdir(parents=True, exist_ok=True)
    r_train = np.linspace(1.0, 4.0, args.train)
    r_test = np.random.default_rng(0).uniform(1.0, 4.0, args.test)
    r_valid = np.random.default_rng(1).uniform(1.0, 4.0, VALID)
    train = rhf_curve(r_train, args.basis)
    test = rhf_curve(r_test, args.basis)
    rewritten = [
        export_npz(noise_free_dataset(*labels), out / f"{name}.npz")
        for name, labels in (
            ("train", train),
            ("valid", rhf_curve(r_valid, args.basis)),
            ("test", test),
        )
    ]
    if any(rewritten):
        print("note: the exported md5 is not sGDML's fingerprint; rewritten as sGDML computes it")
    from nnqmc.pes.dataset import write_dataset

    write_dataset(out / "train.h5", noise_free_dataset(*train))

    sgdml = str(Path(args.sgdml_python).parent / "sgdml")
    log = run(
        [sgdml, "all", "train.npz", str(args.train), str(VALID), str(args.test)]
        + ["-v", "valid.npz", "-t", "test.npz", "-s", str(args.sigma), "--gdml", "--cpu"]
        + ["-o", "--model_file", "sgdml_model.npz"],
        out,
    )
    (out / "sgdml.log").write_text(log)
    warnings = [line.strip() for line in log.splitlines() if "[WARN]" in line]
    print("sGDML warnings: " + ("; ".join(warnings) if warnings else "none"))
    (out / "sgdml_predict.py").write_text(SGDML_PREDICT)
    run(
        [args.sgdml_python, "sgdml_predict.py", "sgdml_model.npz", "test.npz", "sgdml_pred.npz"],
        out,
    )
    theirs = np.load(out / "sgdml_pred.npz")
    if sorted(theirs["idxs_train"].tolist()) != list(range(args.train)):
        sys.exit("sGDML did not train on every training geometry")

    sigma = args.sigma * BOHR_ANGSTROM
    command = ["fit", str(out / "train.h5"), "--out", str(out / "nnqmc_model.h5")]
    command += ["--use", "forces", "--sigma", repr(sigma), "--valid", "0", "--no-symmetry"]
    print("$ nnqmc " + " ".join(command), flush=True)
    if nnqmc_main(command) != 0:
        sys.exit("nnqmc fit failed")
    energy, forces, _ = predict(load_model(out / "nnqmc_model.h5"), test[0])
    ours_e = energy * HARTREE_EV
    ours_f = forces * HARTREE_EV / BOHR_ANGSTROM
    exact_e = test[1] * HARTREE_EV
    exact_f = test[2] * HARTREE_EV / BOHR_ANGSTROM
    span_e, span_f = float(np.ptp(exact_e)), float(np.ptp(exact_f))
    their_e = theirs["E"].reshape(-1)
    their_f = theirs["F"]
    result = {
        "geometries": {"train": args.train, "test": args.test, "basis": args.basis},
        "sigma_sgdml_per_angstrom": args.sigma,
        "sigma_nnqmc_per_bohr": sigma,
        "label_range": {"energy_eV": span_e, "forces_eV_per_A": span_f},
        "max_difference_fraction": {
            "energy": float(np.max(np.abs(ours_e - their_e)) / span_e),
            "forces": float(np.max(np.abs(ours_f - their_f)) / span_f),
        },
        "max_error_vs_exact_fraction": {
            "nnqmc_energy": float(np.max(np.abs(ours_e - exact_e)) / span_e),
            "nnqmc_forces": float(np.max(np.abs(ours_f - exact_f)) / span_f),
            "sgdml_energy": float(np.max(np.abs(their_e - exact_e)) / span_e),
            "sgdml_forces": float(np.max(np.abs(their_f - exact_f)) / span_f),
        },
        "md5_rewritten": any(rewritten),
        "sgdml_warnings": warnings,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out / 'result.json'}")


if __name__ == "__main__":
    main()
