"""The one scrubber (fanout.redact): every credential shape a service or tool may echo into a message."""

import pytest

from fanout.redact import scrub

LEAK = "Zm9vYmFyLXNlY3JldA"


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {LEAK}",
        f"Authorization: Basic {LEAK}==",
        f'{{"token": "{LEAK}"}}',
        f'{{"access_token":"{LEAK}","expires_in":3600}}',
        f'{{"password": "{LEAK}"}}',
        f'{{"client_secret": "{LEAK}"}}',
        f"client_secret={LEAK}&grant_type=client_credentials",
        f"-----BEGIN RSA PRIVATE KEY-----\n{LEAK}\n-----END RSA PRIVATE KEY-----",
        f"-----BEGIN CERTIFICATE-----\n{LEAK}",  # cut off before its END line
        f"PUT https://acct.blob.core.windows.net/c/b?sv=2024-05-04&sig={LEAK}%3D&se=2026",
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={LEAK}==;EndpointSuffix=core.windows.net",
        f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey={LEAK}",
        f"pulling oci://ci:{LEAK}@registry.example/charts/hello failed",
        f"postgresql+psycopg2://airflow:{LEAK}@127.0.0.1:5432/airflow",
        f"client-key-data: {LEAK}",
        f"token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.{LEAK}",
    ],
)
def test_a_credential_never_survives(text):
    assert LEAK not in scrub(text)


def test_known_secrets_go_and_ordinary_words_stay():
    assert scrub(f"login as ci with {LEAK}", [LEAK, None, ""]) == "login as ci with ***"
    text = "POST /auth/token: HTTP 401: basic checks failed; see the token bucket docs"
    assert scrub(text) == text


def test_scrubbed_json_stays_json_and_a_limit_cuts():
    assert scrub(f'{{"token": "{LEAK}", "n": 1}}') == '{"token": "***", "n": 1}'
    assert scrub("x" * 500, limit=300) == "x" * 299 + "…"
