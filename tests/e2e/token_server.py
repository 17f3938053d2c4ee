"""A local OAuth token endpoint for end-to-end tests of Vertex (Google JWT-bearer grant) credentials."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


class TokenServer:
    """Answers every POST with a fresh bearer token; counts the grants it handed out."""

    def __init__(self, token: str = "ya29.test-token", expires_in: int = 3600) -> None:
        self.token = token
        self.grants = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.grants += 1
                body = json.dumps({"access_token": owner.token, "expires_in": expires_in,
                                   "token_type": "Bearer"}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def write_service_account(path: Path, token_uri: str, project: str = "babelgate-test") -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": project, "private_key_id": "test-key",
        "private_key": pem, "client_email": f"gateway@{project}.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": token_uri}))
    return path
