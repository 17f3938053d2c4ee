"""A test identity provider: an RSA key, its JWKS (a file, or served on 127.0.0.1 like an OIDC `jwks_uri`), and
tokens signed with it (RS256), unsigned (`alg: none`) or tampered with."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class TokenIssuer:
    """Tokens of one issuer URL, signed with one RSA key (`kid`)."""

    def __init__(self, issuer: str, kid: str = "test-key-1") -> None:
        self.issuer = issuer
        self.kid = kid
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._server: http.server.ThreadingHTTPServer | None = None
        self.fetches = 0
        """How many times the served JWKS was fetched."""

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                          "n": _uint(numbers.n), "e": _uint(numbers.e)}]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def claims(self, audience: str | list[str], subject: str = "alice", lifetime: float = 600, **extra: Any
               ) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.issuer, "aud": audience, "sub": subject, "iat": now, "exp": now + int(lifetime), **extra}

    def token(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": kid or self.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def unsigned(self, claims: dict[str, Any]) -> str:
        header = {"alg": "none", "typ": "JWT"}
        return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."

    def tampered(self, claims: dict[str, Any], **changes: Any) -> str:
        """A token signed for `claims`, whose payload then says `changes` (the signature no longer matches)."""
        header, _, signature = self.token(claims).split(".")
        return f"{header}.{b64url(json.dumps({**claims, **changes}).encode())}.{signature}"

    # -- a served JWKS -------------------------------------------------------------------------------------------

    def serve(self) -> str:
        """Serve the JWKS on 127.0.0.1 (a free port); returns its URL. `stop` ends it."""
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches += 1
                body = json.dumps(issuer.jwks()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/certs"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
