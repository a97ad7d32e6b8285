//! Advisory file locks (`flock`) on files in the cache volume. They hold across processes and across
//! pods on one node (one kernel), and the kernel drops them when the holder dies, so a killed job never
//! leaves a slot or a mirror locked.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// A held lock; dropping it unlocks.
pub(crate) struct FileLock {
    _lock: Flock<File>,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// Take the lock if nobody holds it.
pub(crate) fn try_lock(path: &Path) -> std::io::Result<Option<FileLock>> {
    let f = open(path)?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(FileLock { _lock: l })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(std::io::Error::from(e)),
    }
}

/// Why waiting for a lock ended without it.
#[derive(Debug)]
pub(crate) enum LockError {
    Io(std::io::Error),
    TimedOut,
    Stopped,
}

/// Wait for the lock until `deadline` or until `stopped()` says so (polled every 5 ms while another
/// holder has it; an uncontended lock costs one syscall).
pub(crate) async fn lock(
    path: &Path,
    deadline: Instant,
    stopped: impl Fn() -> bool,
) -> Result<FileLock, LockError> {
    loop {
        match try_lock(path) {
            Ok(Some(l)) => return Ok(l),
            Ok(None) => {}
            Err(e) => return Err(LockError::Io(e)),
        }
        if stopped() {
            return Err(LockError::Stopped);
        }
        if Instant::now() >= deadline {
            return Err(LockError::TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
