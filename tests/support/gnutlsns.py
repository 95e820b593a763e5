"""Run a GnuTLS server (``gnutls-serv``) and the TLS scan against it inside a private network namespace.

``gnutls-serv`` has no option to bind one address: it listens on every address of the host. In a fresh
user+network namespace (``unshare -rn``) the only interface is a loopback of its own, so the server can
listen nowhere else and the scan talks to nothing else. GnuTLS really offers what OpenSSL 3 here cannot
(RC4, 3DES) and NULL/anonymous suites, and staples a given OCSP response (``--ocsp-response``).

``python -m tests.support.gnutlsns DIR PRIORITY`` (run by :func:`scan_in_namespace`) prints the
ScanFacts as JSON.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.procs import run_bounded

PORT = 4433  # inside the namespace: nothing else lives there


def available() -> bool:
    if shutil.which("gnutls-serv") is None or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def scan_in_namespace(directory: Path, priority: str, timeout: float = 120) -> dict[str, Any]:
    """The scan's facts (JSON-decoded; DER fields base64) of a gnutls-serv with ``directory``'s
    cert.pem/key.pem (and ocsp.der if present) and ``priority``."""
    script = "ip link set lo up && exec " + shlex.join(
        [sys.executable, "-m", "tests.support.gnutlsns", str(directory), priority]
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = run_bounded(["unshare", "-rn", "sh", "-c", script], timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"namespace run failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _serve_and_scan(directory: Path, priority: str) -> dict[str, Any]:
    from probes.recorder import Recorder
    from probes.tls.audit import TLSCheckSettings
    from probes.tls.scan import scan
    from probes.wire.net import Endpoint, TLSSettings

    args = [
        "gnutls-serv",
        "--port",
        str(PORT),
        "--x509certfile",
        str(directory / "cert.pem"),
        "--x509keyfile",
        str(directory / "key.pem"),
        "--priority",
        priority,
        "--disable-client-cert",
    ]
    if (directory / "ocsp.der").exists():
        args += ["--ocsp-response", str(directory / "ocsp.der")]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("gnutls-serv did not start") from None
                time.sleep(0.05)
        ep = Endpoint(
            "127.0.0.1", PORT, tls_mode="implicit", tls=TLSSettings(server_name="mail.example.test")
        )
        transcript: list[str] = []
        facts = asyncio.run(scan(TLSCheckSettings(ep, "tcp", timeout=10), Recorder(transcript=transcript)))
    finally:
        server.terminate()
        server.wait(10)
    out = dataclasses.asdict(facts)
    out["served_chain"] = [base64.b64encode(c).decode() for c in facts.served_chain]
    out["ocsp_staple"] = base64.b64encode(facts.ocsp_staple).decode() if facts.ocsp_staple else None
    out["transcript"] = transcript
    return out


if __name__ == "__main__":
    print(json.dumps(_serve_and_scan(Path(sys.argv[1]), sys.argv[2])))
