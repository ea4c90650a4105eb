"""The signing proxy listening inside a network namespace (as the e2e tests put it at a
guest's 169.254.169.254) while it reaches nova on this namespace's loopback. nova is
replaced here by a small HTTP server that echoes the headers it got (the real nova
metadata API is in test_nova_metadata.py and test_e2e_metadata.py)."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from netinject.openstack.metadata_proxy import Binding, metadata_proxy, sign_instance_id
from netinject.vm.harness import netns

pytestmark = [pytest.mark.root]

IID = "5f0c2a1e-7b3d-4c8e-9a6f-1d2e3c4b5a69"


@contextlib.contextmanager
def echo() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # http.server's name
            body = json.dumps({"path": self.path, **dict(self.headers)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_proxy_answers_in_the_namespace_and_signs_for_nova() -> None:
    with netns(links=()) as ns, echo() as nova:
        subprocess.run(["ip", "-n", ns, "addr", "add", "169.254.169.254/32", "dev", "lo"],
                       check=True)
        binding = Binding(IID, "project-1", "192.0.2.10")
        with metadata_proxy(nova, "s3cret", binding, ("169.254.169.254", 80), netns=ns) as url:
            assert url == "http://169.254.169.254:80"
            got = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c",
                 "import urllib.request as u; print(u.urlopen("
                 "'http://169.254.169.254/openstack/latest/vendor_data2.json', "
                 "timeout=10).read().decode())"],
                capture_output=True, text=True, timeout=60, check=False)
            assert got.returncode == 0, got.stderr
            seen = json.loads(got.stdout)
            assert seen["path"] == "/openstack/latest/vendor_data2.json"
            assert seen["X-Instance-ID"] == IID
            assert seen["X-Tenant-ID"] == "project-1"
            assert seen["X-Forwarded-For"] == "192.0.2.10"
            assert seen["X-Instance-ID-Signature"] == sign_instance_id("s3cret", IID)
