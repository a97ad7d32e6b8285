//! Finding a program in a `PATH`.

/// `name` as `execvp` would find it in `path`, as an absolute path. Handing std an absolute program
/// lets it start the child with `posix_spawn` (a vfork) instead of a `fork` of the agent: with a bare
/// name and a `PATH` of the child's own it cannot use `posix_spawnp`.
pub(crate) fn which(name: &str, path: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).map(|d| d.join(name)).find(|p| {
        p.is_absolute()
            && std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
    })
}
