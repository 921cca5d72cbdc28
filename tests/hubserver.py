"""A local stand-in for the places weights are published, on 127.0.0.1 only: the Hugging Face Hub's file endpoint
(``/{repo}/resolve/{revision}/{file}`` with the headers ``huggingface_hub`` reads) and plain URLs (Meta's
``dl.fbaipublicfiles.com`` layout). Files can be served whole, cut short, with a wrong hash, or never answered."""

from __future__ import annotations

import hashlib
import http.server
import threading
from dataclasses import dataclass, field


@dataclass
class Served:
    data: bytes
    truncate: bool = False  # announce the full length, send half, close
    wrong_hash: bool = False  # an ETag that is not the content's sha256
    hang: bool = False  # accept, then answer nothing until the test releases it (HubServer.release)


@dataclass
class HubServer:
    files: dict[str, Served] = field(default_factory=dict)  # URL path -> what it serves
    requests: list[str] = field(default_factory=list)
    # A hanging request waits on `release` (a minute at most): a client still waiting when the test sets it has no
    # timeout of its own, which `answered_hangs` then shows, with no clock in the test.
    release: threading.Event = field(default_factory=threading.Event)
    answered_hangs: int = 0

    def __post_init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _serve(self, body: bool) -> None:
                path = self.path.split("?")[0]
                server.requests.append(f"{self.command} {path}")
                item = server.files.get(path)
                if item is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if item.hang:
                    server.release.wait(60)
                    server.answered_hangs += 1
                    return
                digest = hashlib.sha256(item.data).hexdigest()
                self.send_response(200)
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("ETag", f'"{"f" * 64 if item.wrong_hash else digest}"')
                self.send_header("Content-Length", str(len(item.data)))
                self.end_headers()
                if body:
                    self.wfile.write(item.data[: len(item.data) // 2] if item.truncate else item.data)
                    if item.truncate:
                        self.close_connection = True

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # a hanging handler must not hold up the test's teardown
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def hub_file(self, repo: str, name: str, data: bytes, **kw: bool) -> None:
        self.files[f"/{repo}/resolve/main/{name}"] = Served(data, **kw)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
