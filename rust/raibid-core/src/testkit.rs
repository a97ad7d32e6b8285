//! Helpers for tests and benchmarks: a real `redis-server` on a free loopback port, in a temporary
//! directory, killed on drop. Tests never skip when Redis is missing: `start` fails with a message
//! that says how to install it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private Redis server.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data directory (AOF lives here).
    pub dir: PathBuf,
    _tmp: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    use std::path::{Path, PathBuf};
    /// A directory removed on drop.
    pub struct TempDir(PathBuf);
    impl TempDir {
        pub fn new() -> std::io::Result<TempDir> {
            let p = std::env::temp_dir().join(format!("raibid-redis-{}", ulid::Ulid::new()));
            std::fs::create_dir_all(&p)?;
            Ok(TempDir(p))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free TCP port on 127.0.0.1 (racy by nature; callers retry on bind failure).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Start `redis-server` with AOF on (`appendonly yes`, `appendfsync always`), the configuration
    /// raibid uses in local mode and on the cluster.
    pub fn start() -> anyhow::Result<RedisServer> {
        let tmp = tempfile_dir::TempDir::new()?;
        let dir = tmp.path().to_path_buf();
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            match Self::spawn(&dir, port) {
                Ok(child) => {
                    return Ok(RedisServer {
                        child: Some(child),
                        port,
                        dir,
                        _tmp: Some(tmp),
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("could not start redis-server")))
    }

    fn spawn(dir: &std::path::Path, port: u16) -> anyhow::Result<Child> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run redis-server ({e}); install it (apt-get install redis-server) or run ./scripts/dev.sh test, which does"
                )
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!("redis-server on port {port} exited: {status}");
            }
            // Ready means answering PONG: after a restart Redis accepts connections while it still
            // loads its AOF (`-LOADING`), and commands fail until it is done.
            if ping(port) {
                return Ok(child);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        anyhow::bail!("redis-server on port {port} did not start within 10 s")
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL the server (its AOF stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and directory (after `kill`).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = Some(Self::spawn(&self.dir, self.port)?);
        Ok(())
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
