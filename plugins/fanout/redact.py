"""The one secret scrubber: every message that may reach a log, an exception, XCom or CI output goes
through `scrub` first (Azure SDK errors, Helm's stderr, Airflow API answers, drift reports).

It removes what a credential looks like, wherever a service or a tool may echo one: bearer and basic
authorization values, JWTs, PEM blocks, JSON / YAML / query fields named like a secret (`token`,
`access_token`, `password`, `client_secret`, `client-key-data`, …), SAS query parameters (`sig=` …),
connection-string keys (`AccountKey=`, `SharedAccessKey=`), the user:password part of URLs, and any
exact strings the caller knows to be secret. Pure: no imports beyond `re`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----[\s\S]*?(?:-----END [A-Z0-9 ]+-----|\Z)")
_AUTH = re.compile(r"(?i)\b(bearer\s+|basic\s+(?=[A-Za-z0-9+/=]{8,}))[^\s,;\"']+")
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
# A secret-named field in JSON, YAML, a header or a query: keep the name, drop the value (quoted or bare).
# Not after `/` or `.`: `POST /auth/token: HTTP 401` names a path, not a field.
_FIELD = re.compile(
    r"(?i)(\"?(?<![\w/.-])(?:access_token|refresh_token|id_token|token|password|passwd|pwd|secret|client_secret|"
    r"client-secret|clientsecret|api[_-]?key|client-key-data|client-certificate-data)\"?\s*[:=]\s*)"
    r"(\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s,;&\"'}\]]+)"
)
_SAS = re.compile(r"(?i)([?&](?:sig|se|st|sp|sv|sr|skoid|sktid|skt|ske|sks|skv|spr|sip)=)[^&\s\"']*")
_CONN_KEY = re.compile(r"(?i)\b((?:AccountKey|SharedAccessKey|SharedAccessSignature)=)[^;\s\"']+")
# scheme://user:password@host and scheme://token@host (oci://, https://, postgresql://, …).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\"']+@")


def scrub(text: str, secrets: Iterable[str | None] = (), limit: int | None = None) -> str:
    """`text` without anything credential-like; cut to `limit` characters (with `…`) when given."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _PEM.sub(MASK, text)
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    text = _SAS.sub(rf"\1{MASK}", text)
    text = _CONN_KEY.sub(rf"\1{MASK}", text)
    text = _AUTH.sub(rf"\1{MASK}", text)
    text = _FIELD.sub(lambda m: m.group(1) + _quoted_mask(m.group(2)), text)
    text = _JWT.sub(MASK, text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _quoted_mask(value: str) -> str:
    # Keep the quotes, so a scrubbed JSON document still reads as JSON.
    return f"{value[0]}{MASK}{value[0]}" if value[:1] in ("'", '"') else MASK
