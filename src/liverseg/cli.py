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


def _finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` are refused with a message)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


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
    # allow_nan=False: describe() gives None for what JSON cannot hold, so the output always parses
    text = json.dumps(info, indent=2, default=str, allow_nan=False) if args.json else format_description(info)
    sys.stdout.write(text + "\n")
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
        words = ["liverseg", "train"] + [w for d in args.data for w in ("--data", d)]
        words += ["--config", args.config, "--out", args.out] + [w for s in args.stage or () for w in ("--stage", s)]
        words += ["--export", args.export] if args.export else []
        (Path(args.out) / COMMAND_TXT).write_text(shlex.join(words) + "\n")
    result = train(config, out_dir=args.out, resume=args.resume, stages=args.stage, data=args.data)
    for name, st in result.stages.items() if main_rank else ():
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


def _add_predict(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "predict",
        help="segment liver and tumors: mask, report (JSON/CSV/HTML/PDF), overlays, DICOM SEG per case",
        description="Segment each case into OUT/<case>/. Inputs: NIfTI/MHA/NRRD files, DICOM folders (one "
        "series = one case) or .zip, PNG/JPEG/DICOM slices, or folders of such files (one case per file).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders")
    p.add_argument("-o", "--out", required=True, help="output folder (one subfolder per case)")
    p.add_argument("--model", default="liver-tumor-3d", help="3D model: bundled name or bundle folder")
    p.add_argument("--model-2d", default="liver-tumor-2d",
                   help="model for single 2D slices: bundled name or bundle folder ('none': refuse slices)")
    tta = p.add_mutually_exclusive_group()
    tta.add_argument("--tta", action="store_true",
                     help="mirroring test-time augmentation on every axis (8x the network time in 3D); default: "
                          "each model's own mode (config.json tta.axes)")
    tta.add_argument("--no-tta", action="store_true", help="no test-time augmentation, whatever the model's own mode")
    p.add_argument("--tta-axes", default=None, metavar="AXES",
                   help="mirror only these axes, e.g. 'z' (2 passes) or 'y,x' (implies --tta; default: z,y,x, 8 passes)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to run (default cpu)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--overlap", type=_finite_float, default=0.5, help="sliding-window overlap, 0 to <1 (default 0.5)")
    p.add_argument("--engine", default="torch", choices=["torch", "onnx"], help="network runtime (default torch)")
    p.add_argument("--neck-radius-mm", type=_finite_float, default=6.0, metavar="MM",
                   help="postprocessing: cut small parts joined to the liver by a neck narrower than twice this "
                        "(the heart through the diaphragm; default 6); 0 turns the rule off")
    p.add_argument("--save-probabilities", action="store_true", help="also write probabilities.nii.gz")
    p.add_argument("--pixel-size", type=float, default=None, metavar="MM",
                   help="pixel size in mm of PNG/JPEG slices (their files do not say it), so areas come out in mm²; "
                        "without it their sizes are in pixels")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    p.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from liverseg.errors import ModelError
    from liverseg.inference import Predictor, run_cases

    try:
        predictor = Predictor(
            args.model,
            model_2d=None if str(args.model_2d).lower() == "none" else args.model_2d,
            device=args.device,
            threads=args.threads,
            # --no-tta with --tta-axes reaches the Predictor as a contradiction (exit 2), not as TTA
            tta=False if args.no_tta else (True if (args.tta or args.tta_axes is not None) else None),
            tta_axes=None if args.tta_axes is None else [a.strip() for a in args.tta_axes.split(",") if a.strip()],
            overlap=args.overlap,
            engine=args.engine,
            neck_radius_mm=args.neck_radius_mm,
        )
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc)) from exc
    except ModelError as exc:  # at construction only the names are resolved: a model that does not exist
        raise InputError(str(exc)) from exc
    results = run_cases(args.inputs, args.out, predictor=predictor, overwrite=args.overwrite,
                        save_probabilities=args.save_probabilities, progress_bar=sys.stderr.isatty() or args.verbose > 0,
                        pixel_size_mm=args.pixel_size)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "bad_input", "failed")}
    sys.stdout.write(
        f"{counts['done']} done, {counts['skipped']} skipped (already done), "
        f"{counts['bad_input'] + counts['failed']} failed -> {args.out}\n"
    )
    for r in results:
        if r.status in ("bad_input", "failed"):
            sys.stdout.write(f"  FAILED {r.input}: {r.error}\n")
    if counts["failed"]:
        return 1
    return 2 if counts["bad_input"] else 0


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


def _add_serve(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("serve", help="run the web app (waitress) with a local job worker pool")
    p.add_argument("--data-dir", default="liverseg-data", help="SQLite database and study files (default ./liverseg-data)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="jobs run at the same time in this server (default 1); with --broker the server runs none: "
                        "start `liverseg worker` processes instead")
    p.add_argument("--model", default=None, help="3D model bundle name or folder (default: the bundled model)")
    p.add_argument("--max-upload-gb", type=_positive_float, default=2.0, help="largest upload in GB (default 2)")
    p.add_argument("--max-files", type=_positive_int, default=5000, help="most files in one upload (default 5000)")
    p.add_argument("--insecure-cookies", action="store_true",
                   help="send the session cookie over plain HTTP too (LAN without TLS; not needed for 127.0.0.1)")
    p.add_argument("--job-timeout-s", type=_positive_float, default=1800.0,
                   help="stop a job after this many seconds (default 1800)")
    p.add_argument("--job-memory-gb", type=_positive_float, default=6.0,
                   help="stop a job that grows the server by more than this many GB (default 6)")
    p.add_argument("--no-warm-up", action="store_true",
                   help="do not load the models at start (then the first study pays it, a few seconds)")
    _add_scale_out(p)
    p.set_defaults(handler=_run_serve)


def _add_scale_out(p: argparse.ArgumentParser, *, worker: bool = False) -> None:
    """--database, --broker and --visibility-timeout-s: shared by serve and worker (docs/deploy.md).

    Their defaults come from LIVERSEG_DATABASE / LIVERSEG_BROKER, so a password in a URL need not show in `ps`.
    """
    import os

    p.add_argument("--database", default=os.environ.get("LIVERSEG_DATABASE") or None, metavar="URL",
                   help="postgresql://user@host:5432/name for studies, users and jobs (default: $LIVERSEG_DATABASE, "
                        "else SQLite in --data-dir; the password goes in ~/.pgpass, not on the command line)")
    broker = os.environ.get("LIVERSEG_BROKER") or None
    p.add_argument("--broker", default=broker, metavar="URL", required=worker and broker is None,
                   help="redis://host:6379/0: " + ("take jobs from this queue" if worker else
                        "hand jobs to `liverseg worker` processes through this queue instead of running them here"))
    p.add_argument("--visibility-timeout-s", type=_positive_float, default=60.0, metavar="S",
                   help="a running job whose worker stops renewing its lease for this long (killed, machine lost) "
                        "is requeued (default 60)")


def _run_serve(args: argparse.Namespace) -> int:
    from liverseg.web.app import open_store
    from liverseg.web.auth import ensure_admin
    from liverseg.web.server import serve

    from pathlib import Path

    from liverseg.web.auth import write_initial_password

    Path(args.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    from liverseg.web.lock import check_database_of

    admin_store = open_store(args.data_dir, database=args.database)
    check_database_of(args.data_dir, admin_store)  # a folder of another database: stop before adding an admin
    password = ensure_admin(admin_store)
    admin_store.close()
    if password is not None:  # into a private file: service managers keep stdout in their logs
        where = write_initial_password(args.data_dir, "admin", password)
        sys.stdout.write(f"Created the first user 'admin'; its password is in {where} (readable by you only).\n"
                         "Sign in, change it on the Account page (the file is then deleted).\n")
        sys.stdout.flush()
    def listening() -> None:
        sys.stdout.write(f"liverseg: serving on http://{args.host}:{args.port} (Ctrl+C to stop)\n")
        sys.stdout.flush()

    serve(data_dir=args.data_dir, host=args.host, port=args.port, workers=args.workers, model=args.model,
          max_upload_bytes=int(args.max_upload_gb * 1024**3), max_files=args.max_files,
          secure_cookies=not args.insecure_cookies, job_timeout_s=args.job_timeout_s,
          job_memory_bytes=int(args.job_memory_gb * 1024**3), on_listening=listening, database=args.database,
          broker=args.broker, lease_s=args.visibility_timeout_s, warm_up=not args.no_warm_up)
    return 0


def _add_worker(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("worker", help="run web app jobs from a Redis queue (any number, on any machine; docs/deploy.md)")
    p.add_argument("--data-dir", default="liverseg-data", help="the server's data folder, shared with this machine")
    p.add_argument("--model", default=None, help="3D model bundle name or folder (default: the bundled model)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to run (default cpu)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads per job (default: torch's choice)")
    p.add_argument("--job-timeout-s", type=_positive_float, default=1800.0,
                   help="stop a job after this many seconds (default 1800)")
    p.add_argument("--job-memory-gb", type=_positive_float, default=6.0,
                   help="stop a job that grows the worker by more than this many GB (default 6)")
    p.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    _add_scale_out(p, worker=True)
    p.set_defaults(handler=_run_worker)


def _run_worker(args: argparse.Namespace) -> int:
    from pathlib import Path

    from liverseg.web.app import open_store
    from liverseg.web.jobs import shared_factory
    from liverseg.web.lock import check_database_of
    from liverseg.web.queue_rq import run_worker

    def build() -> object:
        from liverseg.inference import Predictor

        options = {"device": args.device, "threads": args.threads}
        return Predictor(args.model, **options) if args.model else Predictor(**options)

    if not args.database and not (Path(args.data_dir) / "liverseg.sqlite3").is_file():
        raise InputError(f"{args.data_dir} has no liverseg.sqlite3: give the server's --database, or point --data-dir "
                         "at the folder of a server that uses SQLite")
    store = open_store(args.data_dir, database=args.database)
    check_database_of(args.data_dir, store)
    run_worker(broker_url=args.broker, store=store, data_dir=args.data_dir, predictor_factory=shared_factory(build),
               lease_s=args.visibility_timeout_s, timeout_s=args.job_timeout_s,
               memory_bytes=int(args.job_memory_gb * 1024**3), burst=args.burst)
    return 0


def _add_users(sub: "argparse._SubParsersAction") -> None:
    import os

    p = sub.add_parser("users", help="manage web app users and API tokens")
    p.add_argument("--data-dir", default="liverseg-data", help="the web app's data folder (default ./liverseg-data)")
    p.add_argument("--database", default=os.environ.get("LIVERSEG_DATABASE") or None, metavar="URL",
                   help="the server's postgresql://... database, if any (default: $LIVERSEG_DATABASE)")
    us = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    a = us.add_parser("add", help="add a user with a random password (printed once)")
    a.add_argument("name")
    a.add_argument("--admin", action="store_true", help="may manage users")
    t = us.add_parser("token", help="create an API token (printed alone on the last line)")
    t.add_argument("name")
    w = us.add_parser("passwd", help="set a user's password (asked for; or one line on stdin)")
    w.add_argument("name")
    lst = us.add_parser("list", help="list users")
    for q in (a, t, w, lst):
        q.add_argument("--data-dir", default=argparse.SUPPRESS, help="as above")
        q.add_argument("--database", default=argparse.SUPPRESS, help="as above")
    p.set_defaults(handler=_run_users)


def _run_users(args: argparse.Namespace) -> int:
    from liverseg.web import auth
    from liverseg.web.app import open_store

    from liverseg.web.lock import check_database_of

    store = open_store(args.data_dir, database=args.database)
    check_database_of(args.data_dir, store)  # users of the database this data folder belongs to
    if args.users_command == "list":
        for u in store.users():
            sys.stdout.write(f"{u.name}\t{'admin' if u.is_admin else 'user'}\t{u.created_at}\n")
        return 0
    if args.users_command == "add":
        password = auth.random_password()
        try:
            auth.create_user(store, name=args.name, password=password, is_admin=args.admin)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        sys.stdout.write(f"Created {'admin' if args.admin else 'user'} {args.name}; password (shown once):\n{password}\n")
        return 0
    user = store.user_by_name(args.name)
    if user is None:
        raise InputError(f"no user named {args.name!r}; add one with `liverseg users add {args.name}`")
    if args.users_command == "token":
        token = auth.new_token()
        store.add_token(user.id, token)
        sys.stdout.write(f"API token for {user.name} (shown once; send it as 'Authorization: Bearer <token>'):\n{token}\n")
        return 0
    # passwd
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat: ") != password:
            raise InputError("the two passwords differ; nothing changed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        auth.set_password(store, user, password)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    sys.stdout.write(f"Password of {user.name} changed; their open sessions were ended.\n")
    return 0


def _add_compare(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "compare",
        help="compare two scans of one patient lesion by lesion, with the RECIST 1.1 response",
        description="Register FOLLOWUP onto BASELINE, match lesions, and write comparison.json, lesion_changes.csv, "
                    "lesion_pairs.png, comparison.html and comparison.pdf into --out. Each scan is a study folder "
                    "(mask.nii.gz from `liverseg predict`) or a mask file; give its CT with --baseline-ct/--followup-ct.",
    )
    p.add_argument("baseline", help="the earlier study folder (or mask file)")
    p.add_argument("followup", help="the later study folder (or mask file)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder for the comparison")
    p.add_argument("--baseline-ct", default=None, metavar="PATH", help="the baseline's CT (NIfTI, DICOM folder or zip)")
    p.add_argument("--followup-ct", default=None, metavar="PATH", help="the follow-up's CT")
    p.add_argument("--max-distance-mm", type=_positive_float, default=15.0,
                   help="largest centroid distance (mm, after registration) that matches two non-overlapping lesions")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--json", action="store_true", help="print comparison.json instead of a summary")
    p.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    import json

    from liverseg.analysis.compare import compare, format_comparison

    result = compare(args.baseline, args.followup, baseline_ct=args.baseline_ct, followup_ct=args.followup_ct,
                     out_dir=args.out, max_distance_mm=args.max_distance_mm, overwrite=args.overwrite)
    sys.stdout.write((json.dumps(result.to_dict(), indent=2) if args.json else format_comparison(result)) + "\n")
    return 0


# Each subcommand adds itself here: (name, function adding its parser).
_BUILDERS: list[Callable[["argparse._SubParsersAction"], None]] = [
    _add_info,
    _add_predict,
    _add_train,
    _add_evaluate,
    _add_compare,
    _add_serve,
    _add_worker,
    _add_users,
]


#: Libraries whose INFO lines are noise in a log (highdicom logs one line per segment and frame).
NOISY_LOGGERS = ("highdicom", "pydicom", "PIL", "matplotlib", "waitress.queue", "urllib3", "numexpr")


def configure_logging(verbose: int) -> None:
    """liverseg's own messages at INFO (DEBUG with -v); other libraries' (highdicom, PIL, ...) only from WARNING on.

    ``-vv`` shows every library's DEBUG messages too. Third-party INFO lines (highdicom logs one per
    segment and frame) would flood a server's log.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("liverseg").setLevel(logging.DEBUG if verbose >= 1 else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose >= 2 else logging.WARNING)


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
    import os

    # Idle OpenMP threads sleep instead of spinning: on a busy CPU spinning made torch's forward
    # up to 30x slower (benchmarks/predict_speed.py). Takes effect only before torch is imported,
    # so it is set here, for every command (predict, train, serve), before any handler runs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
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
