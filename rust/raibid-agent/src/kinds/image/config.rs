//! The image agent's options (flattened into `AgentConfig`).

use clap::Args;
use raibid_core::contract::env;
use std::path::PathBuf;

/// Options of image jobs (Buildah).
#[derive(Debug, Clone, Args)]
pub struct ImageConfig {
    /// The installation's registry image jobs push to (host[:port][/namespace]); the only host the
    /// registry user name and password are sent to. A request may name it or one of --registry-allowed.
    #[arg(long, env = env::REGISTRY)]
    pub registry: Option<String>,

    /// Talk plain HTTP / unverified TLS (`--tls-verify=false`) to the configured registry's host (the
    /// local registry) — to no other host.
    #[arg(long, env = env::REGISTRY_INSECURE, default_value_t = false, action = clap::ArgAction::Set)]
    pub registry_insecure: bool,

    /// Other registries (`host[:port]`, comma-separated) an image request may name; each gets only its
    /// own entry of the auth file (if any), never the user name and password, and TLS verification.
    #[arg(long, env = env::REGISTRY_ALLOWED, default_value = "")]
    pub registry_allowed: String,

    /// Namespaces no image job may push under (`raibid`, the installation's own images, always is).
    #[arg(long, env = env::REGISTRY_RESERVED_NAMESPACES, default_value = "raibid")]
    pub registry_reserved_namespaces: String,

    /// A containers auth file (auth.json) with the registry credentials (a mounted secret), an entry
    /// per registry host. Per job only the entries of the job's registry and of the cache repository's
    /// host are written into the job's private temp dir (mode 0600) and given to Buildah with --authfile.
    #[arg(long, env = env::REGISTRY_AUTH_FILE)]
    pub registry_auth_file: Option<PathBuf>,

    /// Registry user name; with --registry-password-file the agent writes the auth file itself.
    #[arg(long, env = env::REGISTRY_USERNAME)]
    pub registry_username: Option<String>,

    /// File holding the registry password or token (never in argv or a log line).
    #[arg(long, env = env::REGISTRY_PASSWORD_FILE)]
    pub registry_password_file: Option<PathBuf>,

    /// Buildah storage driver: vfs works everywhere (slow, full copies); overlay where the kernel and
    /// the pod allow it (the Spark).
    #[arg(long, env = env::BUILDAH_STORAGE_DRIVER, default_value = "vfs")]
    pub storage_driver: String,

    /// Remote repository for `--cache-from`/`--cache-to` (e.g. registry:3000/raibid/cache); unset: the
    /// local layer cache only.
    #[arg(long, env = env::IMAGE_CACHE_REPO)]
    pub cache_repo: Option<String>,

    /// Test commands may use the network (services, downloads); false: `buildah run --network none`.
    #[arg(long, env = env::IMAGE_TEST_NETWORK, default_value_t = true, action = clap::ArgAction::Set)]
    pub test_network: bool,

    /// Bytes the Buildah storage may use; above it the GC removes the oldest job images.
    #[arg(long, env = env::IMAGE_CACHE_MAX_BYTES, default_value_t = 50 * 1024 * 1024 * 1024)]
    pub image_cache_max_bytes: u64,

    /// Hours a job image is kept as cache; older ones are removed by the GC.
    #[arg(long, env = env::IMAGE_CACHE_MAX_AGE_HOURS, default_value_t = 7 * 24)]
    pub image_cache_max_age_hours: u64,

    /// Run the image cache GC (and pending cleanups) once, print what it removed, and exit.
    #[arg(long)]
    pub image_gc: bool,

    /// The buildah binary.
    #[arg(long, default_value = "buildah", hide = true)]
    pub buildah: PathBuf,
}

impl Default for ImageConfig {
    /// The defaults of the flags (environment not read): for tests that build an `AgentConfig`.
    fn default() -> ImageConfig {
        ImageConfig {
            registry: None,
            registry_insecure: false,
            registry_allowed: String::new(),
            registry_reserved_namespaces: "raibid".into(),
            registry_auth_file: None,
            registry_username: None,
            registry_password_file: None,
            storage_driver: "vfs".into(),
            cache_repo: None,
            test_network: true,
            image_cache_max_bytes: 50 * 1024 * 1024 * 1024,
            image_cache_max_age_hours: 7 * 24,
            image_gc: false,
            buildah: "buildah".into(),
        }
    }
}

impl ImageConfig {
    /// Where image jobs may push (`raibid_core::image::RegistryPolicy`).
    /// Files holding the registry credentials (hidden from every sandboxed step).
    pub(crate) fn credential_files(&self) -> Vec<PathBuf> {
        [
            self.registry_auth_file.as_ref(),
            self.registry_password_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    pub fn policy(&self) -> raibid_core::image::RegistryPolicy {
        raibid_core::image::RegistryPolicy::from_lists(
            self.registry.as_deref(),
            &self.registry_allowed,
            &self.registry_reserved_namespaces,
        )
    }

    /// `--tls-verify=false` for a registry (or repository) reference on the configured registry's
    /// host when it is marked insecure; nothing (verification on) for every other host.
    pub fn tls_args(&self, reference: &str) -> Vec<String> {
        if self.registry_insecure && self.policy().is_default_host(reference) {
            vec!["--tls-verify=false".into()]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        image: ImageConfig,
    }

    #[test]
    fn the_agent_command_is_consistent_with_the_image_options() {
        // Flattened options share one namespace with the agent's own: a clash panics at parse time.
        use clap::CommandFactory;
        crate::config::AgentConfig::command().debug_assert();
    }

    #[test]
    fn tls_verification_is_off_only_for_the_insecure_configured_registry() {
        let cfg = ImageConfig {
            registry: Some("registry.local:5000".into()),
            registry_insecure: true,
            registry_allowed: "ghcr.io".into(),
            ..ImageConfig::default()
        };
        assert_eq!(
            cfg.tls_args("registry.local:5000/acme"),
            vec!["--tls-verify=false".to_string()]
        );
        assert!(cfg.tls_args("ghcr.io").is_empty());
        assert!(cfg.tls_args("evil.example").is_empty());
        assert!(cfg.tls_args("registry.local:5001").is_empty());
        let secure = ImageConfig {
            registry_insecure: false,
            ..cfg
        };
        assert!(secure.tls_args("registry.local:5000").is_empty());
    }

    #[test]
    fn default_matches_the_flag_defaults() {
        let parsed = Wrap::parse_from(["x"]).image;
        let d = ImageConfig::default();
        // Environment variables of the test process could set some; compare the ones they do not.
        assert_eq!(parsed.image_cache_max_bytes, d.image_cache_max_bytes);
        assert_eq!(
            parsed.image_cache_max_age_hours,
            d.image_cache_max_age_hours
        );
        assert_eq!(parsed.test_network, d.test_network);
        assert_eq!(parsed.buildah, d.buildah);
    }
}
