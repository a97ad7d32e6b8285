//! Issue 20 §1: raibid-top reads the dispatcher's API only, so it links no Redis client. Its normal
//! dependency tree (what `cargo build -p raibid-top` compiles) is asked of cargo itself.

#[test]
fn raibid_top_links_no_redis_client() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "raibid-top",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("raibid-core"), "{tree}");
    let redis: Vec<&str> = tree.lines().filter(|l| l.starts_with("redis ")).collect();
    assert!(redis.is_empty(), "raibid-top links {redis:?}");
}
