"""Real server processes on 127.0.0.1 for the HTTP tests, and a raw HTTP/1.1 client.

Servers are started lazily, once per session (or module), with `--port 0`; the port is read
from the server's "listening on" log line and readiness from GET /ready. Their logs go to files
(a full pipe would block the server) which tests may read.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (hooks)

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = str(ROOT / "tests" / "fixtures" / "tiny-bert-fp32")
STARTUP_SECONDS = 60.0  # bound on waiting for a server to listen and load its models


class ServerProcess:
    """`tinyembed serve` in a subprocess. `url` is http://127.0.0.1:PORT."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        # The outer environment's TINYEMBED_* settings must not leak into a test server.
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TINYEMBED_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tinyembed.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
        try:
            self.port = self._wait_for_port()
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"server did not start listening:\n{self.log()}")

    def wait_ready(self) -> "ServerProcess":
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.request("GET", "/ready").status == 200:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"server never became ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body=None, headers: dict | None = None) -> "Reply":
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one Prometheus sample (0 when absent)."""
        text = self.request("GET", "/metrics").body.decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = "^" + re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)$"
        match = re.search(pattern, text, re.M)
        return float(match.group(1)) if match else 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode


def assert_same_vectors(got, want) -> None:
    """A server's vectors against the engine's computed in the test. The server packs requests
    into batches of its own choosing, and on the CPU a GEMM's last bits depend on the batch's
    shape (BLAS threads per GEMM, its small-matrix kernels): the design promises the same vector
    within 1e-5 whatever batch a text lands in; this holds the server to 1e-6."""
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=0, atol=1e-6)


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    @property
    def error(self) -> dict:
        return self.json()["error"]

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


def start_server(tmp_path_factory, name: str, args: list[str], env: dict | None = None) -> ServerProcess:
    log_path = tmp_path_factory.mktemp(name) / "server.log"
    proc = ServerProcess(args, log_path, env)
    try:
        return proc.wait_ready()
    except BaseException:
        proc.stop(signal.SIGKILL)
        raise


# -- raw HTTP over a socket ------------------------------------------------------------------------

class RawClient:
    """A socket that sends bytes as given and parses HTTP/1.1 responses (Content-Length only)."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"connection closed before a full response: {self.buffer[:200]!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(self.buffer) < length:
            if not self._fill():
                raise ConnectionError("connection closed inside a response body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(status, headers, body)

    def head_response(self) -> Reply:
        """A response to HEAD: headers only, whatever Content-Length says."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError("connection closed before a full response")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        return Reply(int(lines[0].split()[1]), headers, b"")

    def closed_by_server(self) -> bool:
        """True once the server has closed (reads EOF or a reset), within the socket timeout."""
        try:
            while True:
                if not self._fill():
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


def post(path: str, body: bytes, extra: str = "", content_type: str = "application/json") -> bytes:
    """The bytes of one POST request with a Content-Length body."""
    ctype = f"Content-Type: {content_type}\r\n" if content_type else ""
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\n{ctype}Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


# -- shared servers --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def server(tmp_path_factory) -> ServerProcess:
    """The default server: bundled MiniLM (+ alias) and the tiny fixture model, no auth."""
    proc = start_server(tmp_path_factory, "main", [
        "--model", "all-MiniLM-L6-v2", "--model", f"tiny={TINY_MODEL}",
        "--served-model-name", "text-embedding-3-small"])
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="session")
def guarded_server(tmp_path_factory) -> ServerProcess:
    """Tiny model behind API keys (flag and file) with per-key rate limits, auto-truncation, JSON logs."""
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# comment\nk-file-secret\nk-tpm-secret\n\n")
    proc = start_server(tmp_path_factory, "guarded", [
        "--model", f"tiny={TINY_MODEL}", "--api-key", "k-main-secret", "--api-key", "k-rpm-secret",
        "--api-key-file", str(key_file), "--rate-limit-rpm", "30", "--rate-limit-tpm", "1200",
        "--auto-truncate", "--log-format", "json"])
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="session")
def minilm():
    from tinyembed.engine import load_engine

    return load_engine("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def tiny():
    from tinyembed.engine import load_engine

    return load_engine(TINY_MODEL, name="tiny")
