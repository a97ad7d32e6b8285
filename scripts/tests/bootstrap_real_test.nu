# Bootstrap stages that can run for real here, in a scratch copy of the repository: the age key on
# .sops.yaml and the secrets stage, with the real sops and age (no cluster needed). They prove that the
# encrypted files land where .sops.yaml's rules and docs/secrets.md say, decrypt with the owner's key, are
# listed in their kustomizations, are committed, and that re-running keeps every value.

use std/assert
use std/testing *
use helpers.nu *
use ../lib/stages.nu *
use ../lib/cluster.nu [SECRET_FILES]

# sops from PATH, else from the GitOps suite's venv (.tools/venv, `pip install -r tests/gitops/requirements.txt`).
def sops-dir []: nothing -> any {
  let found = (which sops | get -o 0.path)
  if $found != null { return ($found | path dirname) }
  let venv = ($REPO_ROOT | path join .tools venv bin)
  if ($venv | path join sops | path exists) { return $venv }
  error make --unspanned {msg: "sops is required by this test and is not installed", help: "python3 -m venv .tools/venv && .tools/venv/bin/pip install -r tests/gitops/requirements.txt (./scripts/dev.sh test --only gitops does it), or install sops >= $SOPS_VERSION"}
}

# A scratch git repository with the files the age-key and secrets stages read.
def scratch []: nothing -> path {
  let dir = (mktemp -d -t raibid-scratch-XXXXXX)
  let files = [
    .sops.yaml scripts/pins.env rust/raibid-core/src/contract.rs
    clusters/dgx-spark/cluster-settings.yaml clusters/dgx-spark/flux-system/gotk-sync.yaml apps/dgx-spark/kustomization.yaml
  ] | append ($SECRET_FILES | each {|f| $f.path | path dirname | path join kustomization.yaml } | uniq)
  for f in $files {
    mkdir ($dir | path join ($f | path dirname))
    cp ($REPO_ROOT | path join $f) ($dir | path join $f)
  }
  ^git -C $dir init -q -b main
  ^git -C $dir add -A
  ^git -C $dir -c user.name=t -c user.email=t@t commit -qm scratch
  $dir
}

def run-stage [name: string, --only-matching: string = ""]: nothing -> nothing {
  let ctx = (context)
  let st = (all-stages | where name == $name | first)
  for step in (do $st.steps $ctx | where {|s| ($only_matching | is-empty) or ($s.show =~ $only_matching) }) {
    do $step.run
  }
}

def probe [name: string]: nothing -> record {
  let st = (all-stages | where name == $name | first)
  do $st.probe (context)
}

@test
def secrets_stage_encrypts_lists_commits_and_keeps_values [] {
  let sops = (sops-dir)
  let dir = (scratch)
  let home = (mktemp -d -t raibid-home-XXXXXX)
  let key = ($home | path join age keys.txt)
  mkdir ($key | path dirname)
  ^age-keygen -o $key o+e>| ignore
  let vars = {RAIBID_ROOT: $dir, RAIBID_CONFIG_DIR: ($home | path join raibid), SOPS_AGE_KEY_FILE: $key,
    PATH: ($env.PATH | prepend $sops), SOPS_DISABLE_VERSION_CHECK: "1", RAIBID_KUBECONFIG: ($home | path join kubeconfig)}
  with-clean-env $vars {
    # The age-key stage's repository part: the owner's public key replaces the placeholder, committed.
    run-stage age-key --only-matching '^(\.sops\.yaml|git add)'
    let pub = (^age-keygen -y $key | str trim)
    assert ((open --raw ($dir | path join .sops.yaml)) | str contains $"&owner ($pub)")
    assert equal (probe secrets).done false
    run-stage secrets
    let p = (probe secrets)
    assert $p.done $p.reason
    let infra = ($SECRET_FILES | where {|f| $f.path | str starts-with infrastructure/ })
    for f in $infra {
      let text = (open --raw ($dir | path join $f.path))
      assert ($text | str contains "ENC[") $"($f.path) is not encrypted"
      assert not ($text | str contains (open --raw ($home | path join raibid gitea-admin-password) | str trim)) "a plaintext password in git"
      let plain = (^sops --decrypt ($dir | path join $f.path) | from yaml)
      assert equal [$plain.metadata.name $plain.metadata.namespace ($plain.stringData | columns)] [$f.name $f.namespace $f.keys]
      let k = (open ($dir | path join ($f.path | path dirname) kustomization.yaml))
      assert (($f.path | path basename) in $k.resources)
    }
    let redis = ($infra | where name == redis-auth | each {|f| (^sops --decrypt ($dir | path join $f.path) | from yaml).stringData.password })
    assert equal ($redis | uniq | length) 1 "the two redis-auth Secrets must hold the same password"
    assert (($redis.0 | str length) == 64 and ($redis.0 =~ '^[0-9a-f]+$')) "the Redis password must be URL-safe hex"
    let admin = (^sops --decrypt ($dir | path join infrastructure/controllers/secrets/gitea-admin.sops.yaml) | from yaml).stringData
    assert equal $admin.username $GITEA_ADMIN
    assert equal $admin.password (open --raw ($home | path join raibid gitea-admin-password) | str trim)
    for c in (ls -l ($home | path join raibid)) { assert equal $c.mode "rw-------" $"($c.name) is not 0600" }
    assert equal (^git -C $dir status --porcelain | str trim) "" "bootstrap left uncommitted changes"
    assert equal (^git -C $dir log --format=%s | lines | first 2) ["bootstrap: encrypted infrastructure secrets" "bootstrap: the owner's age key is the SOPS recipient"]
    # Re-running changes nothing: same values, no new commit.
    let before = (^git -C $dir rev-parse HEAD)
    run-stage secrets
    assert equal (^git -C $dir rev-parse HEAD) $before
    assert equal ((^sops --decrypt ($dir | path join infrastructure/controllers/secrets/gitea-admin.sops.yaml) | from yaml).stringData) $admin
  }
  rm -rf $dir $home
}
