"""A real S3 server for tests: moto's standalone server on a free loopback port.

``moto_server -H 127.0.0.1 -p PORT`` (the test extra's ``moto[server]``) speaks the S3 REST
protocol with multipart uploads, Content-MD5 checks and ranged GETs, and, with ``iam``,
checks credentials and IAM policies once ``INITIAL_NO_AUTH_ACTION_COUNT`` requests have
passed (the set-up's), so wrong keys and missing permissions are real refusals.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import Child, free_port

BUCKET = "earshot-test"
REGION = "us-east-1"
FULL_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
READ_ONLY_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": "*"}]}
NO_AUTH_ACTIONS = 9  # the set-up below: three users, their keys and policies
DOCS = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"


def documented_policy(bucket: str = BUCKET) -> dict[str, Any]:
    """docs/deploy.md's minimal IAM policy, for ``bucket`` with no prefix (moto mis-signs a
    prefix with a ``/`` in a query, see tests/storage/test_objects_s3.py)."""
    text = DOCS.read_text()
    start = text.index("```json\n") + len("```json\n")
    policy = json.loads(text[start:text.index("```", start)])
    doc = json.dumps(policy).replace("my-earshot-archive", bucket)
    doc = doc.replace('["archives/*", "archives/"]', '["*", ""]').replace("/archives/*", "/*")
    return dict(json.loads(doc))


class MotoServer(Child):
    """``moto_server`` on a free loopback port, with a writer and a read-only user whose
    keys and policies it checks when ``iam`` (any keys pass otherwise)."""

    def __init__(self, workdir: Path, *, iam: bool = False) -> None:
        self.dir = workdir
        self.iam = iam
        self.port = free_port()
        self.keys: dict[str, tuple[str, str]] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        if not Path(exe).exists():
            if os.environ.get("CI") == "true":
                pytest.fail("moto_server is not installed (pip install 'moto[server]')")
            pytest.skip("moto_server is not installed (pip install 'moto[server]')")
        self.dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if self.iam:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(NO_AUTH_ACTIONS)
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)], env=env,
            stdout=open(self.dir / f"moto-{self.port}.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None, "moto_server exited"
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        self._provision()
        return self

    def _provision(self) -> None:
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        for user, policy in (("writer", FULL_POLICY), ("reader", READ_ONLY_POLICY),
                             ("documented", documented_policy())):
            iam.create_user(UserName=user)
            k = iam.create_access_key(UserName=user)["AccessKey"]
            iam.put_user_policy(UserName=user, PolicyName="s3",
                                PolicyDocument=json.dumps(policy))
            self.keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
        self.raw().create_bucket(Bucket=BUCKET)  # (authenticated from here on)

    def raw(self, user: str = "writer") -> Any:
        """A plain boto3 client: the independent reader of what the store wrote."""
        import boto3

        key, secret = self.keys[user]
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=key, aws_secret_access_key=secret)

    def env(self, user: str = "writer") -> dict[str, str]:
        key, secret = self.keys[user]
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION,
                "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
