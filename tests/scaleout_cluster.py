"""A whole scale-out deployment on this machine, as docs/deploy.md runs it: one ``liverseg serve`` with
``--broker`` and ``--database``, N ``liverseg worker`` processes, real Redis and PostgreSQL; and an HTTP
client for its REST API (standard library only). Used by the fault and load tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "liverseg.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Api:
    """The REST API with one user's token."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def _call(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def upload(self, name: str, data: bytes, note: str = "") -> str:
        boundary = uuid.uuid4().hex
        parts = [
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n{note}\r\n".encode(),
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        status, body = self._call("POST", "/api/studies", b"".join(parts), f"multipart/form-data; boundary={boundary}")
        assert status == 202, (status, body)
        return json.loads(body)["id"]

    def study(self, sid: str) -> dict:
        status, body = self._call("GET", f"/api/studies/{sid}")
        assert status == 200, (status, body)
        return json.loads(body)

    def file(self, sid: str, name: str) -> tuple[int, bytes]:
        return self._call("GET", f"/api/studies/{sid}/files/{name}")


class Cluster:
    """``liverseg serve`` + workers over one data folder, one Redis URL and one PostgreSQL URL."""

    def __init__(self, *, root: Path, broker: str, database: str, model: Path, port: int,
                 visibility_timeout_s: float = 3.0) -> None:
        self.root, self.broker, self.database, self.model, self.port = root, broker, database, model, port
        self.data = root / "data"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.vt = str(visibility_timeout_s)
        self.server: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self._n = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def liverseg(self, *args: str) -> str:
        """Run one liverseg command to its end; return its stdout."""
        done = subprocess.run(CLI + list(args), capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def start_server(self) -> None:
        log = open(self.logs / "server.log", "ab")
        self.server = subprocess.Popen(
            CLI + ["serve", "--data-dir", str(self.data), "--port", str(self.port), "--broker", self.broker,
                   "--database", self.database, "--visibility-timeout-s", self.vt],
            stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        t0 = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(self.base + "/login", timeout=5).read()
                return
            except (urllib.error.URLError, ConnectionError):
                assert self.server.poll() is None, (self.logs / "server.log").read_text()
                assert time.monotonic() - t0 < 120, "the server did not answer within 120 s"
                time.sleep(0.3)

    def start_worker(self, name: str) -> subprocess.Popen:
        """A worker process; its log is ``logs/<name>-<n>.log`` (a restarted worker gets a new file)."""
        self._n += 1
        log = open(self.logs / f"{name}-{self._n}.log", "ab")
        proc = subprocess.Popen(
            CLI + ["worker", "--data-dir", str(self.data), "--broker", self.broker, "--database", self.database,
                   "--model", str(self.model), "--threads", "1", "--visibility-timeout-s", self.vt],
            stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        self.workers[name] = proc
        return proc

    def add_user(self, name: str) -> Api:
        self.liverseg("users", "--data-dir", str(self.data), "--database", self.database, "add", name)
        token = self.liverseg("users", "token", name, "--data-dir", str(self.data), "--database",
                              self.database).strip().splitlines()[-1]
        return Api(self.base, token)

    def worker_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")) if p.name != "server.log")

    def stop(self) -> None:
        for proc in list(self.workers.values()) + ([self.server] if self.server else []):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in list(self.workers.values()) + ([self.server] if self.server else []):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
