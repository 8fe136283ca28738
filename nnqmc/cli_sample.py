"""``nnqmc sample MODEL --temperature T --method md|flow --n N --out FILE``: argument
parsing and printing only (the work is :func:`nnqmc.thermal.sample.sample`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .thermal import PACKAGES


def add_sample(sub: argparse._SubParsersAction) -> None:
    """The ``sample`` subcommand's arguments."""
    p = sub.add_parser(
        "sample", help="thermal geometries exp(-E/kT) of a fitted force field (MD or a flow)"
    )
    p.add_argument("model", metavar="MODEL", help="model file written by nnqmc fit")
    p.add_argument("--temperature", type=float, required=True, metavar="T", help="kelvin")
    p.add_argument("--method", choices=("md", "flow"), default="md", help="(md)")
    p.add_argument("--n", type=int, default=1000, metavar="N", help="geometries (1000)")
    p.add_argument("--out", required=True, metavar="FILE.h5", help="the sample (HDF5)")
    p.add_argument("--xyz", metavar="PATH", help="also write the frames as extxyz (eV, Å)")
    p.add_argument("--plot", metavar="PATH", help="the picture (default FILE.png)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="(0)")
    md = p.add_argument_group("md", "Langevin dynamics (ASE) through nnqmc.ForceField")
    md.add_argument("--timestep", type=float, default=0.5, metavar="FS", help="fs (0.5)")
    md.add_argument("--friction", type=float, default=0.05, metavar="G", help="1/fs (0.05)")
    md.add_argument("--equilibration", type=int, default=2000, metavar="STEPS", help="(2000)")
    md.add_argument("--stride", type=int, default=60, metavar="STEPS", help="between frames (60)")
    flow = p.add_argument_group("flow", "a normalizing flow trained by reverse KL (flowjax)")
    flow.add_argument("--steps", type=int, default=1500, help="training steps (1500)")
    flow.add_argument("--batch", type=int, default=256, help="samples per step (256)")
    flow.add_argument(
        "--examples", metavar="SAMPLE.h5", help="geometries for maximum likelihood (an MD sample)"
    )
    flow.add_argument(
        "--data-weight", type=float, default=1.0, metavar="W", help="of the examples' term (1)"
    )


def _summary(s, out: str) -> str:
    lines = [
        f"{out}: {len(s.weights)} geometries by {s.method} at {s.temperature:g} K "
        f"(ESS {100 * s.ess:.1f} %, {s.evaluations} energy evaluations, {s.wall_time:.0f} s)"
    ]
    for label, a in s.averages().items():
        unit = "bohr" if label.startswith("r(") else "degrees"
        lines.append(f"  <{label}> = {a.mean:.4f} ± {a.error:.4f} {unit}")
    d = s.diagnostics
    box = (
        f"  flow's box (bonds < 3 r_ref): {100 * d.get('outside_box', 0.0):.1f} % of samples "
        f"outside, weight {100 * d.get('edge_weight', 0.0):.2f} % within 5 % of a bond's edge"
    )
    if "examples" in d:
        box += f"; {d['examples_dropped']} example frames outside it dropped, {d['examples']} used"
    lines.append(box)
    if d.get("nan_weights"):
        lines.append(f"  {d['nan_weights']} samples with a NaN log-weight were given weight 0")
    std = 1e3 * s.energy_std
    lines.append(
        f"  force-field σ: mean {float(s.weights @ std):.3f} mHa (reweighted), "
        f"max {std.max():.3f} mHa"
    )
    return "\n".join(lines)


def _collision(args: argparse.Namespace) -> str | None:
    """The message if two of the output files (--out, --xyz, the picture) are one path."""
    paths = {"--out": args.out, "--plot": _picture(args)}
    if args.xyz:
        paths["--xyz"] = args.xyz
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        key = Path(path).resolve()
        if key in seen:
            return f"{path}: {option} and {seen[key]} name the same file"
        seen[key] = option
    return None


def _picture(args: argparse.Namespace) -> str:
    return args.plot or str(Path(args.out).with_suffix(".png"))


def run_sample(args: argparse.Namespace, fail: Callable[[str], int]) -> int:
    """Sample, write the file(s), print the summary; ``fail(message)`` for bad input. Once
    the HDF5 is written, a failed picture is a warning (exit 0), not an error."""
    from .fit import FitError, load_model
    from .thermal.flow import FlowOptions
    from .thermal.md import MDOptions
    from .thermal.sample import sample

    if not Path(args.model).is_file():
        return fail(f"{args.model}: no such model file")
    if not args.temperature > 0:
        return fail(f"--temperature must be positive (kelvin), got {args.temperature:g}")
    if args.n <= 0:
        return fail(f"--n must be positive, got {args.n}")
    if not Path(args.out).resolve().parent.is_dir():
        return fail(f"{args.out}: the directory {Path(args.out).parent} does not exist")
    if args.examples and args.method != "flow":
        return fail("--examples is for --method flow (maximum likelihood on its frames)")
    collision = _collision(args)
    if collision:
        return fail(collision)
    try:
        from .thermal.plot import plot_sample
        from .thermal.store import read_positions, write_extxyz, write_sample

        md = MDOptions(args.timestep, args.friction, args.equilibration, args.stride, args.seed)
        weight = args.data_weight if args.examples else 0.0
        flow = FlowOptions(steps=args.steps, batch=args.batch, data_weight=weight, seed=args.seed)
        model = load_model(args.model)
        examples = None
        if args.examples:
            numbers, examples = read_positions(args.examples)
            if list(numbers) != list(model.atomic_numbers):
                return fail(f"{args.examples}: the atoms {list(numbers)} are not the model's")
        s = sample(model, args.temperature, args.method, args.n, md, flow, examples)
        write_sample(args.out, s, str(args.model))
        if args.xyz:
            write_extxyz(args.xyz, s)
    except (FitError, ValueError) as err:
        return fail(str(err))
    except ImportError as err:
        module = (err.name or "flowjax").split(".")[0]
        package = PACKAGES.get(module, module)
        return fail(f"nnqmc sample needs {module}: pip install {package}")
    except OSError as err:
        return fail(f"{err.filename or ''}: {err.strerror or err}".lstrip(": "))
    try:
        plot_sample(_picture(args), s)
    except Exception as err:  # the sample is written: say so, do not fail
        print(
            f"nnqmc: warning: the picture {_picture(args)} was not written ({err}); "
            f"the sample {args.out} was",
            file=sys.stderr,
        )
    print(_summary(s, args.out))
    return 0
