//! The GPU kind's probe: an agent told to serve `gpu` declares the capability only after it found a
//! GPU at start — NVIDIA device nodes (`/dev/nvidia<N>`) and the driver's own answer, `nvidia-smi -q`
//! (NVIDIA's System Management Interface documentation, "-q, --query": the `Driver Version` and `CUDA
//! Version` lines, then per GPU its `Product Name` and `GPU UUID`). Without one it refuses to start and
//! says what it looked for.
//!
//! A GPU job's steps see exactly the GPU(s) the agent was given: the device nodes bound into their
//! sandbox and `NVIDIA_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES` — the agent's own
//! `NVIDIA_VISIBLE_DEVICES` when the NVIDIA device plugin assigned one (a pod with `nvidia.com/gpu`),
//! else the UUIDs it probed.

use anyhow::{bail, Context};
use raibid_core::job::GpuInfo;
use std::path::{Path, PathBuf};

/// The GPU kind's options: where its probe looks.
#[derive(Debug, Clone, clap::Args)]
pub struct GpuConfig {
    /// The NVIDIA driver's `nvidia-smi` a `gpu` agent probes at start (a test points it at a fixture).
    #[arg(long, default_value = "nvidia-smi", hide = true)]
    pub nvidia_smi: PathBuf,

    /// Where a `gpu` agent looks for NVIDIA device nodes (`nvidia<N>`, `nvidiactl`, `nvidia-uvm`).
    #[arg(long, default_value = "/dev", hide = true)]
    pub gpu_device_dir: PathBuf,
}

/// What a GPU agent found at start.
#[derive(Debug, Clone)]
pub struct GpuProbe {
    /// The GPUs (as `nvidia-smi -q` lists them).
    pub gpus: Vec<GpuInfo>,
    /// Device nodes a GPU step needs (`nvidia<N>`, `nvidiactl`, `nvidia-uvm*`, `nvidia-modeset`).
    pub devices: Vec<PathBuf>,
    /// The value of `NVIDIA_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES` for the steps.
    pub visible: String,
}

/// Parse `nvidia-smi -q` text: the driver and CUDA versions (global) and each GPU's product name and
/// UUID.
pub fn parse_query(text: &str) -> Vec<GpuInfo> {
    let field = |l: &str, name: &str| -> Option<String> {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string())
    };
    let mut driver = String::new();
    let mut cuda = String::new();
    let mut gpus: Vec<GpuInfo> = Vec::new();
    for l in text.lines() {
        if let Some(v) = field(l, "Driver Version") {
            driver = v;
        } else if let Some(v) = field(l, "CUDA Version") {
            cuda = v;
        } else if l.starts_with("GPU ") && l.split_whitespace().count() == 2 {
            // A GPU's section, named by its PCI bus id (`GPU 0000000F:01:00.0`, not indented).
            gpus.push(GpuInfo {
                name: String::new(),
                uuid: String::new(),
                driver_version: String::new(),
                cuda_version: String::new(),
            });
        } else if let Some(v) = field(l, "Product Name") {
            if let Some(g) = gpus.last_mut() {
                g.name = v;
            }
        } else if let Some(v) = field(l, "GPU UUID") {
            if let Some(g) = gpus.last_mut() {
                g.uuid = v;
            }
        }
    }
    for g in &mut gpus {
        g.driver_version = driver.clone();
        g.cuda_version = cuda.clone();
    }
    gpus.retain(|g| !g.uuid.is_empty());
    gpus
}

/// Look for a GPU: device nodes under `dev_dir`, then `nvidia_smi -q`. `Err` says what was looked for.
pub async fn probe(nvidia_smi: &Path, dev_dir: &Path) -> anyhow::Result<GpuProbe> {
    let mut devices: Vec<PathBuf> = std::fs::read_dir(dev_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("nvidia"))
                })
                .collect()
        })
        .unwrap_or_default();
    devices.sort();
    let numbered = devices.iter().any(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("nvidia"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    if !numbered {
        bail!(
            "this agent serves `gpu` jobs but found no GPU: no NVIDIA device node {}/nvidia<N>. \
             Run GPU agents on a host (or a pod with nvidia.com/gpu and runtimeClassName nvidia) with the NVIDIA driver",
            dev_dir.display()
        );
    }
    let out = tokio::process::Command::new(nvidia_smi)
        .arg("-q")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| {
            format!(
                "this agent serves `gpu` jobs and found {} but cannot run `{} -q` (the NVIDIA driver's tool)",
                devices
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                nvidia_smi.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "this agent serves `gpu` jobs but `{} -q` failed ({}): {}",
            nvidia_smi.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let gpus = parse_query(&String::from_utf8_lossy(&out.stdout));
    if gpus.is_empty() {
        bail!(
            "this agent serves `gpu` jobs but `{} -q` lists no GPU with a UUID",
            nvidia_smi.display()
        );
    }
    let visible = std::env::var("NVIDIA_VISIBLE_DEVICES")
        .ok()
        .filter(|v| !v.is_empty() && v != "void" && v != "none")
        .unwrap_or_else(|| {
            gpus.iter()
                .map(|g| g.uuid.as_str())
                .collect::<Vec<_>>()
                .join(",")
        });
    Ok(GpuProbe {
        gpus,
        devices,
        visible,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The layout of `nvidia-smi -q` (NVIDIA's nvidia-smi documentation, -q): a header with the
    /// driver and CUDA versions, then one section per GPU named by its PCI bus id.
    pub(crate) const QUERY: &str = "\n==============NVSMI LOG==============\n\nTimestamp                                 : Sun Dec  6 10:00:00 2026\nDriver Version                            : 580.95.05\nCUDA Version                              : 13.0\n\nAttached GPUs                             : 1\nGPU 0000000F:01:00.0\n    Product Name                          : NVIDIA GB10\n    Product Brand                         : NVIDIA\n    GPU UUID                              : GPU-5c0ba7e2-4a1b-3c9d-8e7f-0123456789ab\n    Minor Number                          : 0\n    FB Memory Usage\n        Total                             : Not Supported\n";

    #[test]
    fn the_query_gives_name_uuid_driver_and_cuda() {
        let g = parse_query(QUERY);
        assert_eq!(
            g,
            vec![GpuInfo {
                name: "NVIDIA GB10".into(),
                uuid: "GPU-5c0ba7e2-4a1b-3c9d-8e7f-0123456789ab".into(),
                driver_version: "580.95.05".into(),
                cuda_version: "13.0".into(),
            }]
        );
        assert!(parse_query("No devices were found\n").is_empty());
    }
}
