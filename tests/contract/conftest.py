"""Fixtures for the Azure contract tests: a TLS certificate for loopback, a contract-checking
server per test, and a fake credential whose tokens the server knows."""

from __future__ import annotations

import pytest

from tests.contract.azure_server import ContractServer, FakeCredential, make_certificate


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(tls):
    srv = ContractServer(*tls)
    yield srv
    srv.close()


@pytest.fixture
def ca(tls) -> str:
    """The CA bundle clients are told to trust (`connection_verify`)."""
    return str(tls[0])


@pytest.fixture
def credential() -> FakeCredential:
    return FakeCredential()
