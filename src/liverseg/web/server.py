"""Serving the app with waitress (a production WSGI server; never Flask's debug server)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from liverseg.web.app import DEFAULT_MAX_FILES, DEFAULT_MAX_UPLOAD_BYTES, create_app
from liverseg.web.lock import DataDirLock, ServerConflictError, port_in_use_message

__all__ = ["serve"]

log = logging.getLogger(__name__)


def serve(
    *,
    data_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    threads: int = 8,
    model: str | Path | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    secure_cookies: bool = True,
    connection_limit: int = 100,
    channel_timeout_s: float = 30.0,
    on_listening: Callable[[], None] | None = None,
    warm_up: bool = True,
    **app_options: Any,
) -> None:
    """Start the worker pool and serve the app on ``host:port`` until interrupted.

    Only one server may use a data folder: a second one stops at once with
    :class:`~liverseg.web.lock.ServerConflictError` naming the process that holds it (before
    touching the store or any job), and a port already in use stops it with a message saying
    so (before any job starts).

    The process's umask becomes 0o077, so every file the server writes under ``data_dir``
    (uploads, outputs, the database) is readable by its owner only. waitress holds at most
    ``connection_limit`` connections and closes one idle for ``channel_timeout_s`` seconds,
    so a client holding many half-open connections cannot block the others for long; behind
    a reverse proxy (nginx, Caddy) the proxy should buffer uploads and limit clients too
    (``docs/threat_model.md``).

    Args:
        workers: job worker threads (each job may use several CPU threads itself).
        threads: waitress request threads.
        connection_limit: most open connections waitress accepts at once.
        channel_timeout_s: seconds an inactive connection is kept open.
        on_listening: called once the port is bound and the jobs started (the CLI says "serving on ...").
        warm_up: load the models and run their networks once in the background as the jobs start
            (:meth:`~liverseg.web.jobs.WorkerPool.warm_up`), so the first study does not pay it.
        **app_options: passed to :func:`~liverseg.web.app.create_app` (``job_timeout_s``, ...).
    """
    import errno
    import os

    import waitress

    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be in 1..65535; got {port}")
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    if int(connection_limit) < 1 or not channel_timeout_s > 0:
        raise ValueError("connection_limit must be >= 1 and channel_timeout_s > 0")
    start_workers = bool(app_options.pop("start_workers", True))
    os.umask(0o077)
    # one server per data folder: taken before the store is opened or any job recovered
    with DataDirLock(data_dir=data_dir, port=int(port)):
        app = create_app(
            data_dir=data_dir, workers=workers, model=model, max_upload_bytes=max_upload_bytes, max_files=max_files,
            secure_cookies=secure_cookies, start_workers=False, **app_options,
        )
        pool = app.extensions["liverseg"].pool
        try:
            server = waitress.create_server(
                app,
                host=host,
                port=int(port),
                threads=int(threads),
                # a little above Flask's own cap, so an upload just over it gets the app's JSON 413, not waitress' text
                max_request_body_size=int(max_upload_bytes) + 1024 * 1024,
                connection_limit=int(connection_limit),
                channel_timeout=float(channel_timeout_s),
                cleanup_interval=max(1, int(channel_timeout_s) // 3),
                max_request_header_size=64 * 1024,
                ident="liverseg",
                clear_untrusted_proxy_headers=True,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServerConflictError(port_in_use_message(host, int(port))) from None
            raise
        # the jobs start only once the port is ours: a server that cannot listen runs nothing
        if start_workers:
            pool.start()
            if warm_up and callable(getattr(pool, "warm_up", None)):  # the embedded pool: models loaded now
                pool.warm_up()
        log.info("liverseg web app on http://%s:%d (data in %s, %d worker(s))", host, port, Path(data_dir).resolve(),
                 workers)
        if on_listening is not None:
            on_listening()
        try:
            server.run()
        finally:
            server.close()
            pool.stop(timeout=5.0)
