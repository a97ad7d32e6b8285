"""A real local stack for the MCP suite: redis-server on a free port, the raibid-dispatcher and
raibid-agent binaries (rust/target/debug, built by `./scripts/dev.sh test` before this suite), real git
repositories of small crates and real cargo builds. Nothing is mocked."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("RAIBID_BIN_DIR", ROOT / "rust" / "target" / "debug"))
TOKEN = "mcp-suite-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: {what}", pytrace=False)
    return path


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        redis = shutil.which("redis-server")
        if redis is None:
            pytest.fail("redis-server is needed (apt-get install redis-server; ./scripts/dev.sh test installs it)", pytrace=False)
        self.redis_port = free_port()
        self.start("redis", [redis, "--port", str(self.redis_port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        self.wait_port(self.redis_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            "RAIBID_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}",
            "RAIBID_API_TOKEN": TOKEN,
            "RAIBID_LISTEN": f"127.0.0.1:{self.port}",
            "RAIBID_URL": self.url,
            "RAIBID_ALLOWED_SCHEMES": "file",  # what the agents below clone; the dispatcher refuses the rest
            "RAIBID_LOG": "info",
        }
        self.start("dispatcher", [str(need(BIN / "raibid-dispatcher", "run `cargo build --bins` in rust/"))], env)
        self.wait_http(f"{self.url}/readyz")
        cache = Path(os.environ.get("RAIBID_TEST_CACHE_DIR", tempfile.gettempdir())) / "raibid-mcp-suite-cache"
        agent_env = {
            "RAIBID_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}",
            "RAIBID_AGENT_NAME": "mcp-suite-agent",
            "RAIBID_WORKSPACE_DIR": str(tmp / "ws"),
            "RAIBID_CACHE_DIR": str(cache),
            "RAIBID_ALLOWED_SCHEMES": "file",
            "RAIBID_BLOCK_MS": "500",
            "RAIBID_CONCURRENCY": "2",
            "RAIBID_LOG": "info",
        }
        self.start("agent", [str(need(BIN / "raibid-agent", "run `cargo build --bins` in rust/"))], agent_env)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("RAIBID_")}
        full.update(env or {})
        log = open(self.tmp / f"{name}.log", "wb")
        self.procs.append(subprocess.Popen(argv, env=full, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))

    @staticmethod
    def wait_port(port: int, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"nothing listens on port {port}")

    def wait_http(self, url: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception as e:  # noqa: BLE001 - reported below
                last = e
            time.sleep(0.1)
        logs = (self.tmp / "dispatcher.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"{url} never answered 200 ({last}); dispatcher log:\n{logs}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="session")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="raibid-mcp-"))
    s = Stack(tmp)
    yield s
    s.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@x"}).stdout


def make_crate(root: Path, name: str, lib: str, extra: dict[str, str] | None = None) -> tuple[str, str]:
    """A git repository holding a one-file library crate; returns (file:// URL, commit sha)."""
    repo = root / name
    (repo / "src").mkdir(parents=True)
    (repo / "Cargo.toml").write_text(f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n')
    (repo / "src" / "lib.rs").write_text(lib)
    for p, text in (extra or {}).items():
        (repo / p).parent.mkdir(parents=True, exist_ok=True)
        (repo / p).write_text(text)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    return f"file://{repo}", git(repo, "rev-parse", "HEAD").strip()
