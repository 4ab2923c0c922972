"""Tamper evidence for verification reports: HMAC-SHA256 under the server's report key.

The key is ``LETHE_REPORT_KEY`` (setting ``report_key``) or, by default, 32 random bytes the server
writes once to ``<registry>/report.key`` (mode 0600). A JSON report carries
``"signature": {"alg", "key_id", "value"}``: the HMAC of the canonical JSON of everything else
(sorted keys, no spaces, UTF-8). An HTML report ends with one comment line,
``<!-- lethe-signature HMAC-SHA256 key_id=... value=... -->``, the HMAC of every byte before it.
Changing any figure, any byte of the page, or the key fails ``lethe report verify``.

Admin keys are named in reports by a key id, an HMAC of the key under the report key: it tells keys
apart without letting a reader test guesses of the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

from lethe.service.secret_files import load_or_create_secret
from lethe.training.verification import canonical_json

REPORT_KEY_FILE = "report.key"
ALGORITHM = "HMAC-SHA256"
HTML_SIGNATURE = re.compile(
    rb"\n<!-- lethe-signature HMAC-SHA256 key_id=(?P<key_id>[0-9a-f]{16}) value=(?P<value>[0-9a-f]{64}) -->\n\Z"
)


class ReportSigner:
    """Signs and checks reports with one key."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("the report key must be at least 16 bytes")
        self._key = key
        self.key_id = self._mac(b"lethe-report-key-id")[:16]

    @classmethod
    def for_registry(cls, root: Path, configured: str = "") -> ReportSigner:
        """The configured key, else ``root/report.key`` (made at first use, mode 0600)."""
        return cls(configured.encode() if configured else load_or_create_secret(Path(root) / REPORT_KEY_FILE))

    def _mac(self, data: bytes) -> str:
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def admin_key_id(self, token: str | None) -> str:
        """How a report names the admin key a request carried (``None``: no key was needed)."""
        if token is None:
            return "no key (open mode)"
        return "key-" + self._mac(b"lethe-admin-key:" + token.encode("utf-8", "surrogatepass"))[:16]

    def sign_json(self, report: dict[str, Any]) -> dict[str, Any]:
        """``report`` with its ``signature`` (any previous one replaced)."""
        body = {k: v for k, v in report.items() if k != "signature"}
        value = self._mac(canonical_json(body))
        return {**body, "signature": {"alg": ALGORITHM, "key_id": self.key_id, "value": value}}

    def sign_html(self, page: str) -> bytes:
        """The page's bytes with the signature comment appended."""
        data = page.encode("utf-8")
        if not data.endswith(b"\n"):
            data += b"\n"
        return data + f"<!-- lethe-signature {ALGORITHM} key_id={self.key_id} value={self._mac(data)} -->\n".encode()

    def verify(self, data: bytes) -> tuple[bool, str]:
        """Whether a report file's bytes (JSON or HTML) carry a valid signature under this key, and why not."""
        stripped = data.lstrip()
        if stripped.startswith(b"{"):
            return self._verify_json(stripped)
        match = HTML_SIGNATURE.search(data)
        if match is None:
            return False, "no Lethe signature found (not a report, or its signature line was removed)"
        if match["key_id"].decode() != self.key_id:
            return False, f"signed with another key (key id {match['key_id'].decode()}, this key is {self.key_id})"
        if not hmac.compare_digest(match["value"].decode(), self._mac(data[: match.start() + 1])):
            return False, "the page was altered after it was signed"
        return True, f"valid: HTML report signed with key {self.key_id}"

    def _verify_json(self, data: bytes) -> tuple[bool, str]:
        try:
            report = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False, "not valid JSON"
        signature = report.get("signature") if isinstance(report, dict) else None
        if not isinstance(signature, dict) or signature.get("alg") != ALGORITHM:
            return False, "no HMAC-SHA256 signature in the report"
        if signature.get("key_id") != self.key_id:
            return False, f"signed with another key (key id {signature.get('key_id')}, this key is {self.key_id})"
        try:
            expected = self.sign_json(report)["signature"]["value"]
        except ValueError:
            return False, "the report holds values JSON cannot carry (altered)"
        if not hmac.compare_digest(str(signature.get("value")), expected):
            return False, "the report was altered after it was signed"
        return True, f"valid: JSON report signed with key {self.key_id}"
