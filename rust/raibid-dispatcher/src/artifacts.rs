//! A job's artifacts (issue 23 §2) through the dispatcher: `GET /api/v1/jobs/{id}/artifacts` lists them
//! (from the job record: name, size, digest, download URL), `GET /api/v1/jobs/{id}/artifacts/{name}`
//! streams one file from the registry (the API token; the public page's token on
//! `/public/jobs/{id}/{token}/artifacts/{name}`), byte for byte as the agent uploaded it — the registry
//! client checks the digest while streaming. `{name}` may also be the file's digest (`sha256:…`).
//!
//! Retention: the manifests go when their job's record goes. `cleanup` deletes them at once; the sweeper
//! (every minute, in every replica) deletes those of records that expired or were dropped by the count
//! bound, from the `raibid:artifacts` index the agents write.

use crate::guard::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use raibid_core::artifacts::{parse_index_member, ArtifactSet, CredentialSources};
use raibid_core::contract::http;
use raibid_core::job::{is_valid_job_id, Job};
use schemars::JsonSchema;
use serde::Serialize;
use std::time::Duration;

/// How the dispatcher reaches the registry (the agents' `RAIBID_REGISTRY*` values).
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    /// The installation's registry (`host[:port][/namespace]`).
    pub registry: Option<String>,
    /// Plain HTTP to the registry's host (the local registry).
    pub insecure: bool,
    /// Credentials (pull and delete).
    pub credentials: CredentialSources,
}

impl RegistryAccess {
    fn default_host(&self) -> String {
        self.registry
            .as_deref()
            .map(raibid_core::image::RegistryPolicy::host_of)
            .unwrap_or_default()
    }

    fn auth(&self, host: &str) -> Result<Option<(String, String)>, String> {
        self.credentials.for_host(host, &self.default_host())
    }

    fn client(&self, host: &str) -> Client {
        let insecure = self.insecure && host.eq_ignore_ascii_case(&self.default_host());
        Client::new(ClientConfig {
            protocol: if insecure {
                ClientProtocol::HttpsExcept(vec![host.to_string()])
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(120)),
            ..ClientConfig::default()
        })
    }

    fn base_url(&self, host: &str) -> String {
        let insecure = self.insecure && host.eq_ignore_ascii_case(&self.default_host());
        format!("{}://{host}", if insecure { "http" } else { "https" })
    }
}

/// One file as the list shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ArtifactFile {
    /// Path relative to the workspace.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// `GET` it here with the API token (`Authorization: Bearer …`).
    pub download_url: String,
}

/// A job's artifacts.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ArtifactList {
    /// Job id.
    pub job_id: String,
    /// The registry manifest holding them (`host/repository@sha256:…`); null when the job uploaded none.
    pub reference: Option<String>,
    /// The files.
    pub files: Vec<ArtifactFile>,
}

/// URL-encode a path for a URL path (each segment, keeping `/`).
fn encode_path(name: &str) -> String {
    let mut o = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// The list of `job`'s artifacts with download URLs under `base` (the API's or the public page's).
pub fn list_of(job: &Job, base: &str) -> ArtifactList {
    let set = job.artifacts.as_ref();
    ArtifactList {
        job_id: job.id.to_string(),
        reference: set.map(|s| s.reference.clone()),
        files: set
            .map(|s| {
                s.files
                    .iter()
                    .map(|f| ArtifactFile {
                        name: f.name.clone(),
                        size: f.size,
                        digest: f.digest.clone(),
                        download_url: format!("{base}/{}", encode_path(&f.name)),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The API download base of a job: `<public url>/api/v1/jobs/{id}/artifacts`.
pub fn api_base(state: &AppState, id: &str) -> String {
    format!(
        "{}{}/jobs/{id}/artifacts",
        state.settings.public_url,
        http::API_PREFIX
    )
}

/// `GET /api/v1/jobs/{id}/artifacts`.
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ArtifactList>, ApiError> {
    if !is_valid_job_id(&id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {id} not found"),
        ));
    }
    let job = state.queue.get(&id).await?;
    Ok(Json(list_of(&job, &api_base(&state, &id))))
}

/// `GET /api/v1/jobs/{id}/artifacts/{*name}`.
pub async fn download(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !is_valid_job_id(&id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {id} not found"),
        ));
    }
    let job = state.queue.get(&id).await?;
    stream_file(&state, &job, &name).await
}

/// Stream `name` (a file name or its digest) of `job`'s artifacts from the registry.
pub async fn stream_file(state: &AppState, job: &Job, name: &str) -> Result<Response, ApiError> {
    let not_found = |m: String| ApiError::new(StatusCode::NOT_FOUND, "not_found", m);
    let Some(set) = job.artifacts.as_ref() else {
        return Err(not_found(format!("job {} has no artifacts", job.id)));
    };
    let Some(file) = set
        .files
        .iter()
        .find(|f| f.name == name || f.digest == name)
    else {
        return Err(not_found(format!(
            "job {} has no artifact `{}` (list them at /api/v1/jobs/{}/artifacts)",
            job.id,
            name.chars().take(200).collect::<String>(),
            job.id
        )));
    };
    let access = &state.settings.intake.artifact_registry;
    let unavailable = |e: String| {
        tracing::warn!(job = %job.id, error = %e, "artifact download: registry");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "registry_unavailable",
            format!("the registry did not serve `{}`: {e}", file.name),
        )
    };
    let auth = access.auth(&set.registry).map_err(unavailable)?;
    let c = access.client(&set.registry);
    let reference = Reference::with_digest(
        set.registry.clone(),
        set.repository.clone(),
        set.manifest_digest.clone(),
    );
    let auth = match auth {
        Some((u, p)) => RegistryAuth::Basic(u, p),
        None => RegistryAuth::Anonymous,
    };
    c.store_auth_if_needed(reference.resolve_registry(), &auth)
        .await;
    let blob = c
        .pull_blob_stream(&reference, file.digest.as_str())
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let file_name = file.name.rsplit('/').next().unwrap_or("artifact");
    let safe: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, file.size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{safe}\""),
            ),
            (header::ETAG, format!("\"{}\"", file.digest)),
            (
                header::HeaderName::from_static("docker-content-digest"),
                file.digest.clone(),
            ),
        ],
        Body::from_stream(blob.stream),
    )
        .into_response())
}

/// Delete one uploaded manifest from the registry (`DELETE /v2/<name>/manifests/<digest>`, OCI
/// distribution spec). oci-client has no delete; the token exchange it does for pushes and pulls
/// (RFC 6750 bearer challenge → the realm's token endpoint with Basic credentials) is done here the
/// same way. A manifest that is already gone counts as deleted.
pub async fn delete_manifest(
    access: &RegistryAccess,
    host: &str,
    repository: &str,
    digest: &str,
) -> Result<(), String> {
    let url = format!(
        "{}/v2/{repository}/manifests/{digest}",
        access.base_url(host)
    );
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let creds = access.auth(host)?;
    let mut req = http.delete(&url);
    if let Some((u, p)) = &creds {
        req = req.basic_auth(u, Some(p));
    }
    let mut r = req.send().await.map_err(|e| e.to_string())?;
    if r.status() == StatusCode::UNAUTHORIZED {
        let challenge = r
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let token = bearer_token(&http, &challenge, creds.as_ref()).await?;
        r = http
            .delete(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
    }
    match r.status() {
        s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
        s => Err(format!("DELETE {url}: {s}")),
    }
}

/// Parse `Bearer realm="…",service="…",scope="…"` and fetch a token from the realm.
async fn bearer_token(
    http: &reqwest::Client,
    challenge: &str,
    creds: Option<&(String, String)>,
) -> Result<String, String> {
    let rest = challenge
        .strip_prefix("Bearer ")
        .ok_or_else(|| format!("the registry asked for `{challenge}` authentication"))?;
    let mut realm = None;
    let mut query = Vec::new();
    for part in split_params(rest) {
        if let Some((k, v)) = part.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "realm" => realm = Some(v),
                "service" | "scope" => query.push((k.trim().to_string(), v)),
                _ => {}
            }
        }
    }
    let realm = realm.ok_or("the registry's challenge has no realm")?;
    let mut req = http.get(&realm).query(&query);
    if let Some((u, p)) = creds {
        req = req.basic_auth(u, Some(p));
    }
    let v: serde_json::Value = req
        .send()
        .await
        .map_err(|e| e.to_string())?
        .error_for_status()
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    v.get("token")
        .or_else(|| v.get("access_token"))
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| "the registry's token endpoint answered without a token".into())
}

/// Split challenge parameters at commas outside quotes.
fn split_params(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Delete a job's uploaded manifest and forget its index entry (cleanup). Errors are for the caller to
/// report; the index entry stays then, and the sweeper tries again.
pub async fn delete_set(state: &AppState, job_id: &str, set: &ArtifactSet) -> Result<(), String> {
    let access = &state.settings.intake.artifact_registry;
    delete_manifest(access, &set.registry, &set.repository, &set.manifest_digest).await?;
    let member = raibid_core::artifacts::index_member(job_id, set);
    raibid_core::queue::artifacts::forget(&state.queue, &member)
        .await
        .map_err(|e| e.to_string())
}

/// Index entries one sweep looks at, in pages of `SWEEP_PAGE` (a pipelined `EXISTS` each).
pub const SWEEP_MAX: usize = 20_000;
const SWEEP_PAGE: usize = 500;

/// One sweep: the manifests of jobs whose record is gone are deleted. Returns how many.
pub async fn sweep(state: &AppState) -> Result<usize, String> {
    let access = &state.settings.intake.artifact_registry;
    let mut n = 0;
    let mut offset = 0;
    while offset < SWEEP_MAX {
        let members = raibid_core::queue::artifacts::uploads(&state.queue, offset, SWEEP_PAGE)
            .await
            .map_err(|e| e.to_string())?;
        if members.is_empty() {
            break;
        }
        let parsed: Vec<_> = members.iter().map(|m| parse_index_member(m)).collect();
        let ids: Vec<String> = parsed
            .iter()
            .map(|p| p.as_ref().map(|p| p.0.clone()).unwrap_or_default())
            .collect();
        let exist = raibid_core::queue::artifacts::records_exist(&state.queue, &ids)
            .await
            .map_err(|e| e.to_string())?;
        let mut removed = 0;
        for ((m, p), live) in members.iter().zip(parsed).zip(exist) {
            let Some((id, host, repo, digest)) = p else {
                let _ = raibid_core::queue::artifacts::forget(&state.queue, m).await;
                removed += 1;
                continue;
            };
            if live {
                continue;
            }
            match delete_manifest(access, &host, &repo, &digest).await {
                Ok(()) => {
                    let _ = raibid_core::queue::artifacts::forget(&state.queue, m).await;
                    removed += 1;
                    n += 1;
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "artifacts: could not delete a manifest")
                }
            }
        }
        offset += members.len() - removed;
    }
    Ok(n)
}

/// The sweeper: every minute.
pub async fn sweeper(state: AppState) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        match sweep(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                manifests = n,
                "artifacts: deleted the manifests of jobs that are gone"
            ),
            Err(e) => tracing::debug!(error = %e, "artifacts: sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parameters_split_outside_quotes() {
        let p = split_params(
            r#"realm="https://g/v2/token",service="g",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[2].ends_with(r#"pull,push""#));
    }

    #[test]
    fn paths_are_encoded_per_byte() {
        assert_eq!(encode_path("target/release/a b"), "target/release/a%20b");
        assert_eq!(encode_path("x?#"), "x%3F%23");
    }
}
