"""docs/deploy.md, run as written: PostgreSQL, Redis, the server, two workers and nginx with TLS on this
machine; then a study uploaded through nginx with an API token is finished by a worker."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from live_servers import free_port, postgres_bin

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deploy.md"

#: a background command in the doc -> the port to wait for before the next command (None: nothing to wait for)
READY = {"redis-server": "REDIS_PORT", "liverseg serve": "APP_PORT", "nginx ": "PROXY_PORT", "liverseg worker": None}


def doc_commands() -> list[str]:
    """Every command line of the doc's ```bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and
            not line.strip().startswith("#")]


def test_the_doc_has_the_commands_the_deploy_test_runs():
    commands = doc_commands()
    assert any(c.startswith("liverseg serve") for c in commands)
    assert sum(c.startswith("liverseg worker") for c in commands) == 2
    assert any(c.startswith("nginx ") for c in commands) and any(c.startswith("redis-server") for c in commands)
    assert any("initdb" in c for c in commands) and any(c.startswith("curl ") for c in commands)
    for command in commands:  # every background command is one the script knows how to wait for
        if command.endswith("&"):
            assert any(command.startswith(k) for k in READY), command


def _script(commands: list[str], pids: Path) -> str:
    lines = [
        "set -euo pipefail",
        "wait_port() { for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; "
        "sleep 0.2; done; echo \"nothing listens on $1\" >&2; return 1; }",
    ]
    for command in commands:
        lines.append(command)
        if command.endswith("&"):
            lines.append(f"echo $! >> {pids}")
            port = next(v for k, v in READY.items() if command.startswith(k))
            if port:
                lines.append(f'wait_port "${port}"')
    return "\n".join(lines) + "\n"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the deploy doc's PostgreSQL steps run as root (runuser -u postgres)"
    for tool in ("redis-server", "nginx", "openssl", "curl", "createdb", "runuser"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} not found (.ci/run installs redis-server, postgresql, nginx-light, curl)"
    if not postgres_bin("initdb"):
        return "PostgreSQL server binaries not found; apt-get install postgresql"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "no 'postgres' user (apt-get install postgresql creates it)"
    return None


@pytest.mark.slow
def test_deploy_doc_runs_as_written_and_serves_a_study_through_nginx(tmp_path):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from liverseg.io import write_volume
    from liverseg.testing import phantom

    root = Path(tempfile.mkdtemp(prefix="liverseg-deploy-"))
    os.chmod(root, 0o755)  # postgres and nginx's workers must reach their folders inside
    env = dict(os.environ, HOME=str(root / "home"), DATA=str(root / "data"), PGDATA=str(root / "pg"),
               PGPORT=str(free_port()), REDIS_DIR=str(root / "redis"), REDIS_PORT=str(free_port()),
               APP_PORT=str(free_port()), PROXY_DIR=str(root / "proxy"), PROXY_PORT=str(free_port()),
               PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}:/usr/sbin", OMP_NUM_THREADS="1")
    for sub in ("home", "redis", "proxy"):
        (root / sub).mkdir()
    os.chmod(root / "proxy", 0o755)
    pids = root / "pids"
    script = root / "deploy.sh"
    script.write_text(_script(doc_commands(), pids), encoding="utf-8")
    logs = open(root / "deploy.log", "wb")
    try:
        done = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT,
                              timeout=400)
        assert done.returncode == 0, (root / "deploy.log").read_text()
        # the study's owner gets a token (as an administrator would), then talks to nginx only
        token = subprocess.run(["liverseg", "users", "token", "ada", "--data-dir", env["DATA"]], env=dict(
            env, LIVERSEG_DATABASE=f"postgresql://liverseg@127.0.0.1:{env['PGPORT']}/liverseg"),
            capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip().splitlines()[-1]
        tls = ssl.create_default_context(cafile=str(root / "proxy" / "cert.pem"))
        base = f"https://127.0.0.1:{env['PROXY_PORT']}"

        def call(method, path, body=None, ctype=None):
            req = urllib.request.Request(base + path, data=body, method=method,
                                         headers={"Authorization": f"Bearer {token}"})
            if ctype:
                req.add_header("Content-Type", ctype)
            with urllib.request.urlopen(req, context=tls, timeout=60) as resp:
                return resp.status, dict(resp.headers), resp.read()

        ct, _ = phantom(shape=(10, 40, 40), spacing=(4.0, 2.0, 2.0), lesions=((5.0, None),))
        write_volume(ct, tmp_path / "ct.nii.gz")
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"ct.nii.gz\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + (tmp_path / "ct.nii.gz").read_bytes() + \
            f"\r\n--{boundary}--\r\n".encode()
        status, headers, answer = call("POST", "/api/studies", body, f"multipart/form-data; boundary={boundary}")
        assert status == 202 and "max-age" in headers.get("Strict-Transport-Security", "")
        sid = json.loads(answer)["id"]
        t0 = time.monotonic()
        while True:
            study = json.loads(call("GET", f"/api/studies/{sid}")[2])
            if study["status"] in ("done", "failed"):
                break
            assert time.monotonic() - t0 < 300, study
            time.sleep(0.5)
        assert study["status"] == "done", study["error"]
        status, _, report = call("GET", f"/api/studies/{sid}/files/report.json")
        assert status == 200 and json.loads(report)["analysis"]["liver_volume_ml"] is not None
    finally:
        for pid in reversed(pids.read_text().split() if pids.exists() else []):  # nginx, workers, server, Redis
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
            time.sleep(0.5)
        pg_ctl = postgres_bin("pg_ctl")
        if pg_ctl and (root / "pg" / "PG_VERSION").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", pg_ctl, "-D", str(root / "pg"), "-m", "immediate",
                            "-w", "stop"], capture_output=True)
        time.sleep(1)
        for pid in (pids.read_text().split() if pids.exists() else []):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)
