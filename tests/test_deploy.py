"""deploy/: the Kubernetes manifests validated offline against a pinned schema version (the
schemas ship inside kubernetes-validate), their settings checked against the real server, and
a rolling restart of two real replicas behind a real nginx running the documented config."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY_MODEL, ServerProcess

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install 'tinyembed[test]'")
KUBERNETES = "1.30.0"  # the oldest version still supported upstream when this was written
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
NGINX_CONF = ROOT / "deploy" / "nginx" / "tinyembed.conf"


def documents() -> dict[str, dict]:
    found = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            found[doc["kind"]] = doc
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any error


def test_the_validator_catches_a_misspelled_field():
    deployment = documents()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecs"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_manifests_agree_with_each_other_and_the_cli():
    from tinyembed.cli import build_parser, server_config

    docs = documents()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config, _ = server_config(build_parser().parse_args(container["args"]), environ={})
    assert (config.host, config.port) == ("0.0.0.0", container["ports"][0]["containerPort"])
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop + config.shutdown_timeout < pod["terminationGracePeriodSeconds"]
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"] == labels
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    rule = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["rules"][0]
    assert docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"] == rule["name"]["as"]


def test_probes_and_the_scaling_metric_exist_on_the_real_server(server):
    container = documents()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert server.request("GET", container[probe]["httpGet"]["path"]).status == 200
    assert server.request("POST", "/v1/embeddings", {"model": "tiny", "input": "x"}).status == 200
    metric = documents()["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    text = server.request("GET", "/metrics").body.decode()
    assert any(line.startswith(metric + "{") for line in text.splitlines()), metric


# -- a rolling restart behind nginx ------------------------------------------------------------------

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
RESTART_BOUND = 60.0  # seconds the whole rolling restart may take


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(tmp: Path, listen: int, replicas: list[int]) -> subprocess.Popen:
    """nginx with the documented config, its example ports replaced by this test's."""
    conf = NGINX_CONF.read_text()
    for example, port in (("127.0.0.1:8001", replicas[0]), ("127.0.0.1:8002", replicas[1]),
                          ("127.0.0.1:8080", listen)):
        assert example in conf
        conf = conf.replace(example, f"127.0.0.1:{port}")
    (tmp / "tinyembed.conf").write_text(conf)
    temp = " ".join(f"{kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                     "scgi"))
    (tmp / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "") +
        f"worker_processes 1;\ndaemon off;\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'} warn;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{ access_log off; {temp} include {tmp / 'tinyembed.conf'}; }}\n")
    proc = subprocess.Popen([NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(tmp / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "error.log").read_text()
            time.sleep(0.02)


class SteadyLoad:
    """Client threads posting embeddings through nginx until stopped; every answer counted."""

    BODY = json.dumps({"model": "tiny", "input": ["rolling restart", "zero failed requests"]}).encode()

    def __init__(self, port: int, clients: int = 3):
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stopping.is_set():
            try:
                conn.request("POST", "/v1/embeddings", self.BODY, {"Content-Type": "application/json"})
                response = conn.getresponse()
                body = response.read()
                outcome = None if response.status == 200 and b'"embedding"' in body else f"{response.status} {body[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self.lock:
                if outcome is None:
                    self.ok += 1
                else:
                    self.failures.append(outcome)
        conn.close()

    def wait_for(self, more: int, deadline: float) -> None:
        target = self.ok + more
        while self.ok < target:
            assert time.monotonic() < deadline and not self.failures, self.failures[:3]
            time.sleep(0.01)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(30)


def served(replica: ServerProcess) -> float:
    return replica.metric("tinyembed_requests_total", route="/v1/embeddings", status="200")


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run does)")
def test_rolling_restart_behind_nginx_loses_no_request(tmp_path):
    ports = [free_port(), free_port()]
    args = lambda port: ["--port", str(port), "--model", f"tiny={TINY_MODEL}", "--no-access-log"]  # noqa: E731
    replicas = [ServerProcess(args(p), tmp_path / f"replica{i}.log").wait_ready() for i, p in enumerate(ports)]
    listen = free_port()
    nginx = start_nginx(tmp_path, listen, ports)
    load = None
    try:
        deadline = time.monotonic() + RESTART_BOUND
        load = SteadyLoad(listen)
        load.wait_for(50, deadline)
        for i, port in enumerate(ports):
            assert replicas[i].stop(signal.SIGTERM) == 0, replicas[i].log()  # drains, exits 0
            load.wait_for(20, deadline)  # the other replica carries the load alone
            replicas[i] = ServerProcess(args(port), tmp_path / f"replica{i}-restarted.log").wait_ready()
            while served(replicas[i]) == 0:  # nginx sends it traffic again before the next restart
                assert time.monotonic() < deadline and not load.failures, load.failures[:3]
                time.sleep(0.05)
        load.wait_for(20, deadline)
    finally:
        if load is not None:
            load.stop()
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(10)
        for replica in replicas:
            replica.stop()
    assert load.failures == [] and load.ok >= 110
