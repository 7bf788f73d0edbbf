"""The AWS control plane for tests: moto's server (S3, SQS, EventBridge, DynamoDB, SageMaker)
on 127.0.0.1, one per test session, reached through the standard AWS configuration chain.

    def test_something(aws: MotoAWS) -> None:
        sqs = aws.client("sqs")                 # boto3 client against the moto server
        name = aws.unique("queue")              # names never collide between tests

The ``aws`` fixture points ``AWS_ENDPOINT_URL`` (and fake credentials, a region) at the server
for the test's duration only, so code under test that uses the standard chain reaches moto.
moto checks no credentials: it emulates the AWS control plane, not its security.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

REGION = "us-east-1"
_counter = itertools.count(1)


@dataclass
class MotoAWS:
    endpoint_url: str
    region: str = REGION

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(_counter)}"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> MotoAWS:
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    return MotoAWS(moto_server)
