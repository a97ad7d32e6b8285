"""The Redis configuration shipped in infrastructure/controllers/redis.yaml, loaded by a real redis-server
(loopback, temporary port and directory): it parses, and the durability and eviction settings are in force."""

import socket
import subprocess
import time

import pytest
import yaml

import gitops
from conftest import tool


def _redis_conf() -> str:
    for doc in yaml.safe_load_all((gitops.ROOT / "infrastructure/controllers/redis.yaml").read_text()):
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "redis-config":
            return doc["data"]["redis.conf"]
    raise AssertionError("no ConfigMap redis-config")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def redis(tmp_path):
    server, cli = tool("redis-server"), tool("redis-cli")
    conf = tmp_path / "redis.conf"
    conf.write_text(_redis_conf())
    port = _free_port()
    # the same argv shape as the StatefulSet: config file, then --requirepass; loopback and a temp dir here
    proc = subprocess.Popen([server, str(conf), "--requirepass", "pw", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(tmp_path), "--daemonize", "no", "--save", ""],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env = {"REDISCLI_AUTH": "pw"}

    def call(*args):
        return subprocess.run([cli, "-p", str(port), *args], capture_output=True, text=True, env=env, timeout=10)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"redis-server refused the configuration:\n{proc.stdout.read()}")
        if call("ping").stdout.strip() == "PONG":
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("redis-server did not answer within 10 s")
    yield call
    proc.terminate()
    proc.wait(timeout=10)


def test_redis_config_is_durable_and_never_evicts(redis):
    def get(name):
        out = redis("config", "get", name).stdout.split()
        return out[1] if len(out) > 1 else None

    assert get("appendonly") == "yes"
    assert get("appendfsync") == "always"
    assert get("maxmemory-policy") == "noeviction"
    assert int(get("maxmemory")) > 0


def test_redis_requires_the_password(redis, tmp_path):
    # without REDISCLI_AUTH the same server refuses commands (the probe relies on the env var)
    port = redis("config", "get", "port").stdout.split()[1]
    r = subprocess.run([tool("redis-cli"), "-p", port, "xlen", "raibid:jobs"], capture_output=True, text=True,
                       env={}, timeout=10)
    assert "NOAUTH" in r.stdout + r.stderr


def test_consumer_group_lag_is_reported(redis, contract):
    """KEDA scales on XINFO GROUPS lag (Redis 7+): the server the config runs on reports it."""
    stream, group = contract["keys"]["JOBS_STREAM"], contract["keys"]["AGENTS_GROUP"]
    assert redis("xgroup", "create", stream, group, "$", "mkstream").stdout.strip() == "OK"
    redis("xadd", stream, "*", "job", "j1")
    info = redis("xinfo", "groups", stream).stdout.split()
    assert "lag" in info and info[info.index("lag") + 1] == "1"
