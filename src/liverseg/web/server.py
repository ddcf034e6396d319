"""Serving the app with waitress (a production WSGI server; never Flask's debug server)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from liverseg.web.app import DEFAULT_MAX_FILES, DEFAULT_MAX_UPLOAD_BYTES, create_app

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
    **app_options: Any,
) -> None:
    """Start the worker pool and serve the app on ``host:port`` until interrupted.

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
        **app_options: passed to :func:`~liverseg.web.app.create_app` (``job_timeout_s``, ...).
    """
    import os

    import waitress

    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be in 1..65535; got {port}")
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    if int(connection_limit) < 1 or not channel_timeout_s > 0:
        raise ValueError("connection_limit must be >= 1 and channel_timeout_s > 0")
    os.umask(0o077)
    app = create_app(
        data_dir=data_dir, workers=workers, model=model, max_upload_bytes=max_upload_bytes, max_files=max_files,
        secure_cookies=secure_cookies, **app_options,
    )
    pool = app.extensions["liverseg"].pool
    log.info("liverseg web app on http://%s:%d (data in %s, %d worker(s))", host, port, Path(data_dir).resolve(), workers)
    try:
        waitress.serve(
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
    finally:
        pool.stop(timeout=5.0)
