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


# Each subcommand adds itself here: (name, function adding its parser).
_BUILDERS: list[Callable[["argparse._SubParsersAction"], None]] = [
    _add_info,
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
