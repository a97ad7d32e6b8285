# Names of the cluster objects and repository paths the scripts act on. The GitOps manifests define them
# (clusters/, infrastructure/, apps/); tests/layout_test.nu checks these against the manifests, so a rename
# there fails the suite instead of a bootstrap.

# Namespaces, by role.
export const NAMESPACES = {
  flux: "flux-system"
  gitea: "gitea"
  keda: "keda"
  system: "raibid-system"
  builds: "raibid-builds"
}

# Services (name, namespace, port).
export const SERVICES = {
  gitea: {name: "gitea-http", namespace: "gitea", port: 3000}
  dispatcher: {name: "raibid-dispatcher", namespace: "raibid-system"}
}

# The cluster name (the directory below clusters/ and the apps overlay).
export const CLUSTER = "dgx-spark"

# The sops-encrypted Secret files bootstrap writes (docs/secrets.md), with their keys.
export const SECRET_FILES = [
  [path, name, namespace, keys];
  ["infrastructure/controllers/secrets/gitea-admin.sops.yaml", "gitea-admin", "gitea", [username, password]]
  ["infrastructure/controllers/secrets/redis-auth.sops.yaml", "redis-auth", "raibid-system", [password]]
  ["infrastructure/configs/secrets/redis-auth.sops.yaml", "redis-auth", "raibid-builds", [password]]
  ["apps/dgx-spark/secrets/raibid-dispatcher.sops.yaml", "raibid-dispatcher", "raibid-system",
    [RAIBID_API_TOKEN, RAIBID_GITEA_WEBHOOK_SECRET, RAIBID_GITHUB_WEBHOOK_SECRET, RAIBID_GITEA_TOKEN, RAIBID_NOTIFY_SECRET, RAIBID_REGISTRY_PASSWORD, RAIBID_GITHUB_TOKEN]]
  ["apps/dgx-spark/secrets/raibid-agent.sops.yaml", "raibid-agent", "raibid-builds", [RAIBID_GIT_TOKEN]]
  ["apps/dgx-spark/secrets/raibid-registry-push.sops.yaml", "raibid-registry-push", "raibid-builds", [password]]
]

# The Secrets bootstrap creates directly with kubectl (never in git).
export const CLUSTER_SECRETS = {
  sops_age: {name: "sops-age", namespace: "flux-system", key: "age.agekey"}
  flux_git: {name: "flux-system", namespace: "flux-system"}
}

# The placeholder recipient in .sops.yaml that bootstrap replaces with the owner's age public key.
export const SOPS_PLACEHOLDER = "age1-replaced-by-bootstrap"

# In-cluster URL of a service.
export def service-url [svc: record]: nothing -> string {
  $"http://($svc.name).($svc.namespace).svc:($svc.port)"
}
