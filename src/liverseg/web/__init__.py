"""The liverseg web app: Flask pages and REST API over the library (upload → job → dashboard).

>>> from liverseg.web import create_app
>>> app = create_app(data_dir="liverseg-data", start_workers=False)  # doctest: +SKIP
"""

from liverseg.web.app import create_app, open_store
from liverseg.web.jobs import WorkerPool, run_study_job

__all__ = ["create_app", "open_store", "run_study_job", "WorkerPool"]
