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
    **app_options: Any,
) -> None:
    """Start the worker pool and serve the app on ``host:port`` until interrupted.

    Args:
        workers: job worker threads (each job may use several CPU threads itself).
        threads: waitress request threads.
    """
    import waitress

    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be in 1..65535; got {port}")
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
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
            max_request_body_size=int(max_upload_bytes),
            ident="liverseg",
            clear_untrusted_proxy_headers=True,
        )
    finally:
        pool.stop(timeout=5.0)
