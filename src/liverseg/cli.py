"""The ``liverseg`` command line: argument parsing only; the work is done by the library.

Exit codes: 0 success, 2 bad input (:class:`liverseg.errors.InputError`),
1 internal failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from liverseg import __version__
from liverseg.errors import InputError, LiversegError

log = logging.getLogger("liverseg")

Handler = Callable[[argparse.Namespace], int]


def _add_info(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("info", help="describe what liverseg reads from a scan (format, geometry, HU range, series)")
    p.add_argument("path", help="NIfTI/MHA/NRRD file, DICOM folder or .zip, or a single 2D slice")
    p.add_argument("--series-uid", default=None, help="pick this SeriesInstanceUID when a folder holds several series")
    p.add_argument("--force", action="store_true", help="read a non-CT modality anyway")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from liverseg.io import describe, format_description

    info = describe(args.path, series_uid=args.series_uid, force=args.force)
    sys.stdout.write((json.dumps(info, indent=2, default=str) if args.json else format_description(info)) + "\n")
    return 0


def _add_train(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "train",
        help="train an nnFormer (or a coarse-to-fine cascade) from a JSON recipe; torchrun for several GPUs",
        description="Train the stages of a recipe (configs/*.json) into --out; "
        "multi-GPU / multi-node: torchrun --nproc-per-node N -m liverseg.cli train ...",
    )
    p.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="dataset folder (LiTS, MSD/nnU-Net, IRCADb, CHAOS layout) or CSV manifest; repeat for several")
    p.add_argument("--config", required=True, metavar="CONFIG.json", help="training recipe, e.g. configs/liver-tumor-3d.json")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (checkpoints, logs, curves, weights)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--stage", action="append", default=None, metavar="NAME", help="train only this stage (repeatable)")
    p.add_argument("--export", default=None, metavar="NAME",
                   help="afterwards, write a model bundle: models/NAME, or the folder NAME if it contains a '/'")
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import os
    import shlex
    from pathlib import Path

    from liverseg.training.config import load_config
    from liverseg.training.export import COMMAND_TXT, export_bundle
    from liverseg.training.trainer import train

    for d in args.data:
        if not Path(d).exists():
            raise InputError(f"--data {d!r} does not exist; give a dataset folder or a CSV manifest")
    config = load_config(args.config)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / COMMAND_TXT).write_text("liverseg " + shlex.join(sys.argv[1:]) + "\n")
    result = train(config, out_dir=args.out, resume=args.resume, stages=args.stage, data=args.data)
    for name, st in result.stages.items():
        m = st.best_metrics or st.last_metrics or {}
        sys.stdout.write(
            f"stage {name}: {st.epochs_done} epochs in {st.train_seconds / 60:.1f} min ({st.stopped_by}); validation "
            f"liver Dice {m.get('liver_dice_mean')}, tumor Dice {m.get('tumor_dice_mean')}; weights in {st.directory}\n"
        )
    if args.export and main_rank:
        dest = Path(args.export) if "/" in args.export else None
        folder = export_bundle(args.out, name=dest.name if dest else args.export, dest=dest)
        sys.stdout.write(f"model bundle written to {folder}\n")
    return 0


def _add_evaluate(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("evaluate", help="score predicted masks against reference masks with the LiTS metrics")
    p.add_argument("--pred", required=True, help="folder of predicted masks (files, or <case>/mask.nii.gz from predict)")
    p.add_argument("--ref", required=True, help="folder of reference masks (0/1/2), e.g. LiTS segmentation-N.nii")
    p.add_argument("-o", "--out", default=None, help="folder for evaluation.json and evaluation_cases.csv")
    p.add_argument("--json", action="store_true", help="print the full result as JSON instead of a summary")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from liverseg.analysis.evaluate import evaluate_folders, format_summary

    result = evaluate_folders(args.pred, args.ref, out_dir=args.out, progress=sys.stderr.isatty())
    sys.stdout.write((json.dumps(result, indent=2, default=str) if args.json else format_summary(result)) + "\n")
    return 0


# Each subcommand adds itself here: (name, function adding its parser).
_BUILDERS: list[Callable[["argparse._SubParsersAction"], None]] = [
    _add_info,
    _add_train,
    _add_evaluate,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liverseg",
        description="Liver and liver-tumor segmentation in abdominal CT with an nnFormer.",
    )
    parser.add_argument("--version", action="version", version=f"liverseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _BUILDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose + 1, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except InputError as exc:
        sys.stderr.write(f"liverseg: error: {exc}\n")
        return 2
    except LiversegError as exc:
        sys.stderr.write(f"liverseg: failed: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("liverseg: interrupted\n")
        return 130
    except Exception as exc:  # an internal failure: say so, with the log for developers
        log.debug("internal error", exc_info=True)
        sys.stderr.write(f"liverseg: internal error ({type(exc).__name__}: {exc}); rerun with -vv and report it\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
