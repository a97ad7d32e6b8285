# Tests of scripts/bootstrap.nu. The pure parts (rendered k3s config, registries, /etc/hosts, kustomizations,
# preflight judgement, stage selection, deadline waits) are unit-tested directly.
#
# The plan (`--dry-run`) is tested against a FAKE SYSTEM: recorded outputs of the commands, files and HTTP
# endpoints the probes read (fixtures/system-fresh.nuon, fixtures/system-finished.nuon), served by
# lib/system.nu when RAIBID_FAKE_SYSTEM is set. This is a stand-in: k3s, Flux and Gitea cannot run in this
# CI (no systemd, no privileges, no ARM64 box), so the probes are exercised against what a fresh DGX Spark
# and a finished one answer, not against a live cluster.
#
# What each fake follows (exit codes and output as the tools document them):
#   sudo -n …            sudo(8): -n never prompts; a needed password is "sudo: a password is required", exit 1
#                        (system.nu: decided by the recorded `sudo -n true`, then the inner command is faked)
#   cat FILE             GNU coreutils cat(1): the bytes, or exit 1 "cat: FILE: No such file or directory"
#   systemctl is-active  systemctl(1): prints the state; exit 0 active, 3 inactive, 4 no such unit
#   k3s --version        k3s' version banner "k3s version v1.35.6+k3s1 (<commit>)" + "go version …"
#   kubectl get … -o json kubectl: the object as JSON, exit 0; NotFound is exit 1 (the probes read null)
#   flux version --client flux CLI: "flux: v<version>"
#   ip -j -4 route/addr  ip(8) (iproute2) with -j: JSON arrays (dev, prefsrc; ifname, addr_info[].local)
#   ufw status           ufw(8): "Status: inactive", or "Status: active" and a To/Action/From table
#   age-keygen -y KEY    age-keygen(1): the recipient, age1… (X25519) or age1pq1… (post-quantum, age ≥ 1.4)
#   sops --decrypt       sops: the plain document on stdout, non-zero exit when the key does not match
#   HTTP probes          the Gitea API (Swagger in shared/reference, checked by fakes/swagger.py)
# apt-get is never faked: preflight only prints the `apt-get install` that fixes a missing tool.

use std/assert
use std/testing *
use helpers.nu *
use ../lib/bootstrap.nu *
use ../lib/stages.nu *
use ../lib/pins.nu [load-pins]
use ../lib/errors.nu [error-code]
use ../lib/gitea.nu
use ../lib/cluster.nu [SECRET_FILES]
use ../lib/secrets.nu [write-config-secret]

# A fixture with its placeholders for image tags filled in from the repository (so a version bump needs
# no re-recording), written to a temp file.
def fixture [name: string]: nothing -> path {
  let s = (settings)
  let text = ($s.images | reduce --fold (open --raw ($REPO_ROOT | path join scripts tests fixtures $"system-($name).nuon")) {|i, acc|
    $acc | str replace --all $"{tag:($i.name)}" ($i.ref | split row ":" | last)
  })
  let f = (mktemp -t $"raibid-system-($name)-XXXXXX.nuon")
  $text | save -f $f
  # A finished node holds exactly the profiles bootstrap installs from the repository (NODE_PROFILES).
  if $name == "finished" {
    let sys = (open $f)
    let files = ($NODE_PROFILES | reduce --fold $sys.files {|p, acc| $acc | upsert $p.node (open --raw ($REPO_ROOT | path join $p.src)) })
    # and the k3s config and Traefik timeouts it rendered for this box (20 cores, 119 GiB, 10GbE at 192.168.1.20).
    let node = {name: spark, ip: "192.168.1.20", iface: enP7s7, tls_san: [spark "192.168.1.20"]}
    let files = ($files | upsert "/etc/rancher/k3s/config.yaml" (render-k3s-config 20 119 $node)
      | upsert "/var/lib/rancher/k3s/server/manifests/raibid-traefik-config.yaml" (render-traefik-config))
    $sys | update files $files | to nuon | save -f $f
  }
  $f
}

def fake-env [file: path]: nothing -> record {
  {RAIBID_FAKE_SYSTEM: $file, RAIBID_CONFIG_DIR: "/home/owner/.config/raibid", RAIBID_KUBECONFIG: "/home/owner/.kube/raibid-ci.yaml", SOPS_AGE_KEY_FILE: null}
}

def plan-for [name: string, --selected: any = null]: nothing -> table {
  let f = (fixture $name)
  let p = (with-clean-env (fake-env $f) {
    let ctx = (context)
    plan $ctx ($selected | default (all-stages | get name))
  })
  rm -f $f
  $p
}

# --- pure parts ------------------------------------------------------------------------------------------

@test
def k3s_config_reserves_resources_for_the_box [] {
  assert equal (reservations 20 124) {cpu: "1", memory: "4Gi"}
  assert equal (reservations 4 16) {cpu: "500m", memory: "1Gi"}
  assert equal (reservations 64 512) {cpu: "3200m", memory: "4Gi"}
  let cfg = (render-k3s-config 20 124 | from yaml)
  assert equal $cfg.write-kubeconfig-mode "0600"
  assert ("system-reserved=cpu=1,memory=4Gi,ephemeral-storage=20Gi" in $cfg.kubelet-arg)
  assert ("kube-reserved=cpu=1,memory=4Gi,ephemeral-storage=10Gi" in $cfg.kubelet-arg)
  assert ($cfg.kubelet-arg | any {|a| $a | str starts-with "eviction-hard=" })
}

@test
def registries_and_hosts_render_idempotently [] {
  let reg = (render-registries "git.example" null | from yaml)
  assert equal $reg.mirrors."git.example".endpoint ["http://git.example"]
  assert equal (registries-auth (render-registries "git.example" {username: u, password: p}) "git.example") {username: u, password: p}
  assert equal (registries-auth null "git.example") null
  let base = "127.0.0.1 localhost\n::1 ip6-localhost\n"
  let once = (render-hosts $base [git.example ci.example])
  assert equal (render-hosts $once [git.example ci.example]) $once "re-rendering /etc/hosts adds a second line"
  assert equal ($once | lines | where {|l| $l | str ends-with "# raibid-ci" }) ["127.0.0.1 git.example ci.example # raibid-ci"]
  assert equal (render-hosts $once [git.other ci.other] | lines | where {|l| $l =~ "raibid-ci" } | length) 1
}

@test
def secrets_kustomization_keeps_its_header_and_sorts [] {
  let current = "# Written by bootstrap.\n# Empty as shipped.\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: []\n"
  let out = (render-secrets-kustomization $current [redis-auth.sops.yaml gitea-admin.sops.yaml])
  assert ($out | str starts-with "# Written by bootstrap.\n# Empty as shipped.\n")
  assert equal ($out | from yaml | get resources) [gitea-admin.sops.yaml redis-auth.sops.yaml]
  assert equal (render-secrets-kustomization $current [] | from yaml | get resources) []
}

@test
def versions_and_settings_substitution [] {
  assert equal ("flux: v2.7.5" | parse-version) "2.7.5"
  assert equal ("sops 3.11.0 (latest)" | parse-version) "3.11.0"
  assert equal ("buildah version 1.23.1 (image-spec 1.0.1-dev)" | parse-version) "1.23.1"
  assert equal ("nothing" | parse-version) null
  assert equal ("git.${RAIBID_DOMAIN}/x" | substitute {RAIBID_DOMAIN: d}) "git.d/x"
  let s = (settings)
  assert equal $s.ops.cluster_url $"http://gitea-http.gitea.svc:3000/($s.ops.owner)/($s.ops.name).git"
  assert ($s.images | all {|i| ($REPO_ROOT | path join $i.containerfile | path exists) }) "an image has no Containerfile"
}

@test
def preflight_judges_the_host [] {
  let pins = (load-pins)
  let tools = {git: "2.34.1", curl: "7.81.0", sops: $pins.SOPS_VERSION, age-keygen: $pins.AGE_VERSION, flux: $pins.FLUX_VERSION, buildah: "1.23.1"}
  # What a DGX Spark reports: MemTotal ≈ 119.7 GiB (issue 21: a check wanting 120 GiB flagged every Spark).
  let host = {os: "Ubuntu 24.04.3 LTS", arch: aarch64, cores: 20, mem_bytes: (125516596 * 1024), disk_free: (3000 * 1024 * 1024 * 1024), cgroup_fs: cgroup2fs,
    listening: [22 53], uid: 1000, sudo_ok: true, tools: $tools, k3s_version: null}
  assert equal (evaluate-checks $host $pins | where not ok) []
  let fresh = ($host | update tools ($tools | update flux null | update sops "3.8.0") | update listening [22 80])
  let bad = (evaluate-checks $fresh $pins | where {|c| (not $c.ok) and $c.fatal })
  assert equal ($bad | get check) ["port 80" "tool sops" "tool flux"]
  assert (($bad | where check == "tool flux" | first | get fix) | str contains $pins.FLUX_VERSION) "the fix names the pinned version"
  # Once k3s runs, it owns the ports; a smaller x86_64 box is a warning, not a failure.
  let small = ($host | update listening [80 443 6443 10250] | update k3s_version $pins.K3S_VERSION | update arch x86_64 | update cores 8)
  let r = (evaluate-checks $small $pins)
  assert equal ($r | where {|c| (not $c.ok) and $c.fatal }) []
  assert equal ($r | where not ok | get check) [architecture cores]
  assert equal (evaluate-checks ($host | update cgroup_fs tmpfs) $pins | where {|c| (not $c.ok) and $c.fatal } | get check) ["cgroup v2"]
}

@test
def stage_selection [] {
  let names = (all-stages | get name)
  assert equal $names [preflight k3s node flux age-key secrets gitea tokens ops-repo images flux-sync reconcile]
  assert equal (select-stages $names --only gitea) [gitea]
  assert equal (select-stages $names --from images) [images flux-sync reconcile]
  assert equal (error-code-of { select-stages $names --only nope }) unknown_stage
  assert equal (error-code-of { select-stages $names --only gitea --from k3s }) bad_flags
}

@test
def waits_have_deadlines_that_name_the_object_and_the_command [] {
  let r = (try {
    wait-until "HelmRelease gitea/gitea" {|| {ok: false, detail: "InstallFailed: timed out", inspect: ["kubectl -n gitea describe helmrelease gitea"]} } --timeout 300ms --interval 50ms
    null
  } catch {|e| $e })
  assert ($r != null) "the wait did not time out"
  assert equal ($r | error-code) wait_timeout
  assert ($r.msg | str contains "HelmRelease gitea/gitea is not ready after") $r.msg
  assert ($r.msg | str contains "InstallFailed") $r.msg
  assert ($r.details.help | str contains "kubectl -n gitea describe helmrelease gitea") $r.details.help
  let ok = (wait-until "x" {|| {ok: true, detail: "fine"} } --timeout 1sec)
  assert equal $ok.detail fine
}

@test
def shown_commands_quote_like_a_shell [] {
  assert equal (show-argv [git commit -m "it's done"]) "git commit -m 'it'\\''s done'"
  assert equal (show-argv [kubectl apply -f -]) "kubectl apply -f -"
}

# --- the plan against a fake system (stand-in for a real Spark) -------------------------------------------

@test
def dry_run_on_a_fresh_machine_runs_every_stage [] {
  let p = (plan-for fresh)
  assert equal ($p | get stage) (all-stages | get name)
  assert equal ($p | where action != run | get stage) [] "a stage would be skipped on a fresh machine"
  assert equal ($p | where {|r| $r.commands | is-empty } | get stage) [] "a stage shows no commands"
  assert equal ($p | where {|r| $r.commands | any {|c| $c | str contains "cannot compute" } } | get stage) []
  let pins = (load-pins)
  let k3s = ($p | where stage == k3s | first)
  assert ($k3s.commands | any {|c| $c | str contains $"INSTALL_K3S_VERSION=($pins.K3S_VERSION)" }) "the k3s pin is not used"
  assert ($k3s.commands | all {|c| not ($c =~ '^(install|systemctl|env) ') }) "host changes must go through sudo for a non-root owner"
  assert (($p | where stage == flux | first | get commands.0) | str contains $"--version=v($pins.FLUX_VERSION)")
  assert (($p | where stage == preflight | first | get reason) | str contains "tool flux (missing)")
}

@test
def dry_run_on_a_finished_machine_skips_every_stage [] {
  let p = (plan-for finished)
  assert equal ($p | where action != skip | select stage reason) [] "a stage would run on a finished machine"
  assert equal ($p | get commands | flatten) []
}

@test
def dry_run_runs_only_what_is_missing [] {
  # The finished machine, but the registry credentials were lost from registries.yaml: only the tokens stage
  # (which writes them) runs; and the k3s stage keeps whatever credentials are there when it re-renders.
  let f = (fixture finished)
  let sys = (open $f)
  let reg = (render-registries "git.raibid.internal" null)
  $sys | update files ($sys.files | update "/etc/rancher/k3s/registries.yaml" $reg) | to nuon | save -f $f
  let p = (with-clean-env (fake-env $f) { plan (context) (all-stages | get name) })
  rm -f $f
  assert equal ($p | where action == run | get stage) [tokens]
}

@test
def dry_run_cli_prints_the_plan_and_no_secret [] {
  let f = (fixture finished)
  let out = (with-clean-env (fake-env $f) {
    do { ^$nu.current-exe --no-config-file ($REPO_ROOT | path join scripts bootstrap.nu) --dry-run } | complete
  })
  assert equal $out.exit_code 0 $out.stderr
  assert ($out.stdout | str contains "0 of 12 stages would run, 12 would be skipped")
  assert ($out.stdout | str contains "[7/12] gitea      SKIP")
  for s in [recorded-admin-password recorded-api-token recorded-notify-secret recorded-owner-token recorded-registry-token recorded-image-push-token AGE-SECRET-KEY] {
    assert not ($out.stdout + $out.stderr | str contains $s) $"($s) was printed"
  }
  let fresh = (fixture fresh)
  let out2 = (with-clean-env (fake-env $fresh) {
    do { ^$nu.current-exe --no-config-file ($REPO_ROOT | path join scripts bootstrap.nu) --dry-run --from gitea } | complete
  })
  assert equal $out2.exit_code 0 $out2.stderr
  assert ($out2.stdout | str contains "6 of 6 stages would run")
  assert ($out2.stdout | str contains "$ kubectl kustomize")
  # Without --dry-run a fake system is refused: nothing can be changed through it.
  let out3 = (with-clean-env (fake-env $fresh) {
    do { ^$nu.current-exe --no-config-file ($REPO_ROOT | path join scripts bootstrap.nu) --only node } | complete
  })
  assert equal $out3.exit_code 1
  assert ($out3.stderr | str contains "fake_system_readonly")
  rm -f $f $fresh
}

@test
def force_needs_only [] {
  let f = (fixture finished)
  let out = (with-clean-env (fake-env $f) {
    do { ^$nu.current-exe --no-config-file ($REPO_ROOT | path join scripts bootstrap.nu) --dry-run --force } | complete
  })
  assert equal $out.exit_code 1
  assert ($out.stderr | str contains "bad_flags")
  let p = (with-clean-env (fake-env $f) { plan (context --force) [age-key] })
  assert equal ($p | select stage action) [{stage: age-key, action: run}]
  assert (($p.0.commands | str join "\n") | str contains ".bak-") "--force keeps the old age key"
  rm -f $f
}

@test
def unrecorded_probe_commands_fail_loudly [] {
  let f = (mktemp -t raibid-system-empty-XXXXXX.nuon)
  {facts: {uid: 0, home: "/root", hostname: x}, missing: [], commands: [], files: {}, http: [], unreachable: []} | to nuon | save -f $f
  let p = (with-clean-env (fake-env $f) { plan (context) [preflight] })
  assert ($p.0.reason | str contains "probe failed: the fake system has no recording for:") $p.0.reason
  rm -f $f
}

# --- the Gitea calls bootstrap makes, against the swagger-checked fake ------------------------------------

@test
def bootstrap_gitea_calls_follow_the_api_document [] {
  let state = {users: {raibid-admin: {token: "t", password: "pw", is_admin: true}}}
  with-fakes {gitea: $state} {|f|
    with-clean-env {RAIBID_GITEA_URL: $f.gitea.url} {
      let basic = {username: raibid-admin, password: pw}
      assert equal (gitea ensure-repo raibid raibid-ci --basic $basic) ["org raibid" "repo raibid/raibid-ci"]
      assert equal (gitea ensure-repo raibid raibid-ci --basic $basic) [] "the second run created something"
      let t1 = (gitea create-token raibid-admin raibid-flux [read:repository] $basic)
      let t2 = (gitea create-token raibid-admin raibid-flux [read:repository] $basic)
      assert ($t1 | is-not-empty)
      assert equal (calls $f.gitea DELETE 'tokens/raibid-flux$' | length) 1 "an existing token is replaced"
      assert equal (gitea package-exists raibid raibid-agent "0.1.0" --basic $basic) false
      # The probes' URLs (from the finished fixture) are documented Gitea endpoints too.
      let fin = (fixture finished)
      for h in (open $fin | get http | where {|h| $h.url | str contains "/api/v1/" }) {
        let path = ($h.url | str replace "http://git.raibid.internal" "")
        http get --full --allow-errors --user raibid-admin --password pw $"($f.gitea.url)($path)" | ignore
      }
      rm -f $fin
      assert-no-violations $f.gitea
    }
  }
}

# --- building blocks that run for real --------------------------------------------------------------------

@test
def seeded_controllers_are_what_flux_builds_minus_secrets [] {
  # The gitea stage's seed (ADR 0003), rendered with the real kubectl kustomize from this repository.
  let docs = (controllers-manifests $REPO_ROOT | split row --regex '(?m)^---\s*$' | where {|d| $d | str trim | is-not-empty } | each {|d| $d | from yaml })
  assert equal ($docs | where kind == Secret) []
  assert equal ($docs | where kind == HelmRelease | get metadata.name | sort) ($docs | where kind == HelmRelease | get metadata.name | sort | uniq)
  assert ("gitea" in ($docs | where kind == HelmRelease | get metadata.name))
  assert equal ($docs | where kind == Namespace | get metadata.name | sort) [gitea keda nvidia-device-plugin raibid-builds raibid-system]
  # ${VAR}s stay for flux envsubst --strict, and every one is a cluster setting.
  let vars = (open ($REPO_ROOT | path join clusters dgx-spark cluster-settings.yaml) | get data | columns)
  let used = ($docs | to yaml | parse --regex '\$\{(?<v>[A-Z0-9_]+)\}' | get v | uniq)
  assert ($used | is-not-empty)
  assert equal ($used | where $it not-in $vars) []
}

@test
def steps_run_argv_with_stdin_and_capture [] {
  let out = (mktemp -t raibid-step-XXXXXX)
  let st = (ext-step [cat] --stdin-from {|| "made when run" } --stdin-desc "(a value)" --save-to $out)
  assert equal $st.show $"cat <<< \(a value\) > ($out)"
  do $st.run
  assert equal (open --raw $out) "made when run"
  rm -f $out
  let bad = (ext-step [ls /nonexistent-raibid])
  assert equal (error-code-of { do $bad.run }) command_failed
}

# --- token scopes -----------------------------------------------------------------------------------------

@test
def bootstrap_tokens_carry_documented_scopes_and_only_image_agents_can_push [] {
  # Gitea token scopes are `read:<category>` / `write:<category>`, the categories being the API's tags
  # (the Swagger's `package`, `repository`, …; write implies read).
  let doc = (open (swagger-path))
  let categories = ($doc.paths | values | each {|p| $p | values | each {|op| if ($op | describe) =~ '^record' { $op.tags? | default [] } else { [] } } | flatten } | flatten | uniq)
  assert ("package" in $categories) $"no package category in the API document: ($categories)"
  for t in $TOKENS {
    for s in $t.scopes {
      let p = ($s | split row ":")
      assert (($p | length) == 2 and $p.0 in [read write] and $p.1 in $categories) $"token ($t.name): scope ($s) is not a Gitea scope"
    }
  }
  # Pushes to Gitea's OCI registry need write:package; exactly one token has it, in a Secret only the image
  # agents receive, as the environment variable RAIBID_REGISTRY_PASSWORD (a Rust build step can read its
  # agent's clone token, and a mounted file would be readable by any step of the agent's uid: ADR 0009).
  let pushers = ($TOKENS | where {|t| "write:package" in $t.scopes } | get name)
  assert equal $pushers [raibid-image-push]
  # …a token of the push user, not of the admin (ADR 0012), whose name the image agents push with; every agent
  # and the dispatcher enforce the same registry and reserved namespaces.
  assert equal ($TOKENS | where name == raibid-image-push | get 0.owner) $PUSH_USER
  let cm = {|f| open ($REPO_ROOT | path join apps base raibid $f) | get data }
  assert equal (do $cm agent-config.yaml | get RAIBID_REGISTRY_USERNAME) $PUSH_USER
  let agents = (do $cm agent-config.yaml)
  let disp = (open ($REPO_ROOT | path join apps base raibid dispatcher.yaml) | where kind == Deployment | first | get spec.template.spec.containers.0.env
    | reduce --fold {} {|e, acc| $acc | insert $e.name ($e.value? | default null) })
  for k in [RAIBID_REGISTRY RAIBID_REGISTRY_RESERVED_NAMESPACES] {
    assert (($agents | get -o $k) != null) $"agent-config.yaml has no ($k)"
    assert equal ($disp | get -o $k) ($agents | get $k) $"the dispatcher's ($k) is not the agents'"
  }
  let f = ($SECRET_FILES | where name == raibid-registry-push | first)
  assert equal $f.keys [password]
  for m in [agent-image-scaledjob.yaml agent-image-warm-pool.yaml agent-scaledjob.yaml agent-warm-pool.yaml] {
    let obj = (open ($REPO_ROOT | path join apps base raibid $m))
    let pod = if $obj.kind == ScaledJob { $obj.spec.jobTargetRef.template.spec } else { $obj.spec.template.spec }
    let vols = ($pod.volumes | where {|v| ($v.secret?.secretName? | default "") == raibid-registry-push })
    assert equal $vols [] $"($m): the push token is mounted as a file"
    let refs = ($pod.containers.0.env | where {|e| ($e.valueFrom?.secretKeyRef?.name? | default "") == raibid-registry-push })
    # Every agent publishes (images; artifacts, ADR 0018): the push token as env, never a file.
    assert equal ($refs | each {|e| [$e.name $e.valueFrom.secretKeyRef.key] }) [[RAIBID_REGISTRY_PASSWORD password]] $"($m): the push token is not RAIBID_REGISTRY_PASSWORD"
  }
}

# --- CRDs before their users (issue 21 §2) ------------------------------------------------------------------

# Walk the stages in order; every group a stage's manifests need must be provided by an earlier stage or by an
# earlier step of the same stage. Returns the violations.
def crd-order-violations [plan: table, stages: table, needs: record]: nothing -> list<string> {
  mut provided = []
  mut bad = []
  for st in $plan {
    let own = ($stages | where stage == $st.stage | get -o 0.provides | default [])
    # Within the stage: its CRD steps (kubectl apply -k …/config/crd) must come before the manifests' apply.
    let crd_at = ($st.commands | enumerate | where {|c| $c.item =~ 'config/crd' } | get -o 0.index)
    let use_at = ($st.commands | enumerate | where {|c| $c.item =~ 'infrastructure/controllers' } | get -o 0.index)
    if ($own | is-not-empty) and $st.stage != flux and ($crd_at == null or ($use_at != null and $crd_at > $use_at)) {
      $bad = ($bad | append $"($st.stage): its CRDs are applied after the manifests that use them")
    }
    $provided = ($provided | append $own)
    for g in ($needs | get -o $st.stage | default []) {
      if $g not-in $provided { $bad = ($bad | append $"($st.stage): applies users of ($g) before any stage installed its CRDs") }
    }
  }
  $bad
}

@test
def crds_precede_their_users_in_the_stage_order [] {
  let p = (plan-for fresh)
  let docs = (controllers-manifests $REPO_ROOT | split row --regex '(?m)^---\s*$' | where {|d| $d | str trim | is-not-empty } | each {|d| $d | from yaml })
  let needs = {gitea: (crds-needed $docs)}
  # The controllers use Flux's kinds (HelmRepository, HelmRelease) and KEDA's operator needs keda.sh.
  assert equal $needs.gitea [helm.toolkit.fluxcd.io keda.sh source.toolkit.fluxcd.io]
  assert equal (crd-order-violations $p (stage-crds) $needs) []
  let gitea = ($p | where stage == gitea | first)
  let tag = (keda-crds-source $REPO_ROOT).tag
  assert ($gitea.commands.0 | str contains $"config/crd?ref=($tag)") $gitea.commands.0
  # Seen failing: the gitea stage as it was (controllers applied with no KEDA CRDs before them).
  let old = ($p | update commands {|r| if $r.stage == gitea { $r.commands | where {|c| $c !~ 'config/crd|crd/scaledjobs' } } else { $r.commands } })
  let old_stages = (stage-crds | where stage != gitea)
  assert equal (crd-order-violations $old $old_stages $needs) ["gitea: applies users of keda.sh before any stage installed its CRDs"]
  # And with the flux stage after gitea, the HelmReleases would come first.
  let swapped = ($p | where stage != flux | append ($p | where stage == flux))
  assert ((crd-order-violations $swapped (stage-crds) $needs) | any {|v| $v =~ 'helm.toolkit.fluxcd.io' })
}

@test
def the_documented_allocatable_is_what_the_k3s_config_leaves [] {
  # A Spark: 20 cores, MemTotal 125516596 kB (≈ 119.7 GiB). The kubelet subtracts system-reserved and
  # kube-reserved (render-k3s-config) and keeps eviction-hard memory.available free.
  let mem_gib = 125516596 / 1024 / 1024
  let r = (reservations 20 ($mem_gib | math floor))
  let cfg = (render-k3s-config 20 ($mem_gib | math floor) | from yaml)
  let evict = ($cfg.kubelet-arg | where {|a| $a | str starts-with "eviction-hard=" } | first | parse --regex 'memory.available<(?<g>\d+)Gi' | get 0.g | into int)
  let cpu = 20 - 2 * ($r.cpu | into int)
  let mem = ($mem_gib - 2 * ($r.memory | str replace "Gi" "" | into int) - $evict | math floor)
  let q = (open ($REPO_ROOT | path join infrastructure configs build-limits.yaml) | where kind == ResourceQuota | first)
  assert equal $q.metadata.annotations."raibid.dev/node-allocatable" $"cpu=($cpu),memory=($mem)Gi"
}

@test
def a_failing_sudo_is_loud_not_a_missing_file [] {
  # The finished machine, but sudo now wants a password (sudo -n exits 1, sudo(8)). Before issue 21 the probes
  # read that as "registries.yaml is missing": the k3s stage re-rendered it without credentials and the tokens
  # stage rotated every token. Now both stages stop with sudo_failed and change nothing.
  let f = (fixture finished)
  let sys = (open $f)
  $sys | update commands ($sys.commands | where argv != [sudo -n "true"] | append {argv: [sudo -n "true"], exit_code: 1, stderr: "sudo: a password is required\n"}) | to nuon | save -f $f
  let p = (with-clean-env (fake-env $f) { plan (context) (all-stages | get name) })
  for st in [k3s tokens] {
    let row = ($p | where stage == $st | first)
    assert ($row.reason | str contains "sudo: a password is required") $"($st): ($row.reason)"
    assert equal [$row.action $row.commands] [fail []] $"($st) would run: ($row.commands)"
  }
  let err = (with-clean-env (fake-env $f) { try { read-root (context) /etc/rancher/k3s/registries.yaml; null } catch {|e| $e } })
  assert equal ($err | error-code) sudo_failed
  rm -f $f
  # With sudo working, a file that really is missing is null (cat(1): exit 1, "No such file or directory").
  let ok = (fixture finished)
  assert equal (with-clean-env (fake-env $ok) { read-root (context) /etc/nothing-here }) null
  assert ((with-clean-env (fake-env $ok) { read-root (context) /etc/rancher/k3s/registries.yaml }) | str contains "auth")
  rm -f $ok
}

@test
def tokens_rotate_only_when_asked [] {
  # A finished machine, tokens stage forced: every token is where it is used, so nothing is created.
  let f = (fixture finished)
  let forced = (with-clean-env (fake-env $f) { plan (context --force) [tokens] })
  assert ($forced.0.commands.1 | str contains "for: none: all 6 tokens are in place") $forced.0.commands.1
  assert not ($forced.0.commands | any {|c| $c =~ '^note: ' }) "a forced re-run announces new tokens"
  let have = (with-clean-env (fake-env $f) { existing-tokens (context) })
  assert equal ($have | values | where $it == null) [] $"a token was not found: ($have)"
  assert equal $have.raibid-flux "recorded-flux-token"
  # --rotate replaces all of them.
  let rotated = (with-clean-env (fake-env $f) { plan (context --force --rotate) [tokens] })
  assert ($rotated.0.commands.1 | str contains "for: raibid-owner, raibid-dispatcher, raibid-agent, raibid-flux, raibid-registry, raibid-image-push")
  # Only the registry credentials lost: only that token is made (before issue 21 all six were replaced).
  let sys = (open $f)
  $sys | update files ($sys.files | update "/etc/rancher/k3s/registries.yaml" (render-registries "git.raibid.internal" null)) | to nuon | save -f $f
  let p = (with-clean-env (fake-env $f) { plan (context) [tokens] })
  assert ($p.0.commands.1 | str contains "for: raibid-registry;") $p.0.commands.1
  rm -f $f
  let cli = (do { ^$nu.current-exe --no-config-file ($REPO_ROOT | path join scripts bootstrap.nu) --dry-run --rotate } | complete)
  assert ($cli.stderr | str contains "bad_flags") $cli.stderr
}

# The tokens stage's Gitea steps (the push user, then the tokens), run against the swagger-checked fake Gitea as
# on an installation where no token is in place yet (no Secret decrypts, no cluster: every token is made).
# Returns the token values the stage would write into the Secrets.
def run-gitea-token-steps [ctx: record]: nothing -> record {
  let steps = (do (all-stages | where name == tokens | first | get steps) $ctx)
  let gitea_steps = ($steps | where {|s| ($s.show | str starts-with "POST ") or ($s.show | str starts-with "Gitea user") })
  for s in $gitea_steps { do $s.run }
  let store = ((secret-tmp $ctx) | path join tokens.json)
  let values = (open $store)
  rm -rf (secret-tmp $ctx)
  $values
}

def push-ctx [url: string, orgs: list<string>, --rotate]: nothing -> record {
  write-config-secret GITEA_ADMIN_PASSWORD pw --force | ignore
  context --rotate=$rotate | update s.gitea_url $url | upsert s.publish_orgs $orgs | update tmp (mktemp -d -t raibid-tokens-XXXXXX)
}

@test
def image_push_token_is_a_non_admin_users_with_package_write_only_where_repositories_publish [] {
  # Issue 17 §2, ADR 0012. Seen failing on the stage before: raibid-image-push was made for raibid-admin (a site
  # admin: its write:package token could replace raibid/raibid-agent), and no push user existed.
  # The starting point: an installation made by that stage (the admin holds a push token), `raibid` exists,
  # `acme` publishes images and exists, `octo` publishes and does not exist yet, `someone` is a user.
  let state = {
    users: {raibid-admin: {token: "t", password: "pw", is_admin: true}, someone: {password: "x"}}
    orgs: {raibid: {owner: raibid-admin}, acme: {owner: raibid-admin}}
    tokens: {raibid-admin: {raibid-image-push: "0000000000000000000000000000000000adm1n0"}}
  }
  with-fakes {gitea: $state} {|f|
    with-clean-env {} {
      let ctx = (push-ctx $f.gitea.url [acme octo])
      assert ((push-user-problems $ctx) | is-not-empty) "the probe finds nothing to do before the stage ran"
      let values = (run-gitea-token-steps $ctx)
      let st = (fake-get $f.gitea state)
      # raibid-image-push is the push user's, scope write:package only; the admin keeps no push token.
      let admin_push = ($st.tokens.raibid-admin | get -o raibid-image-push)
      assert ($admin_push == null) $"raibid-image-push is still a token of the admin \(the Secret gets it: ($values.raibid-image-push == $admin_push)\)"
      assert equal ($st.tokens | get -o $PUSH_USER | default {} | columns) [raibid-image-push] $"($PUSH_USER)'s tokens"
      assert equal ($st.token_scopes | get $PUSH_USER | get raibid-image-push) [write:package]
      assert equal ($values.raibid-image-push) ($st.tokens | get $PUSH_USER | get raibid-image-push) "the Secret would not get the push user's token"
      # A user of its own, no site admin, no password change pending (its password is random and kept nowhere).
      let u = ($st.users | get $PUSH_USER)
      assert equal [$u.is_admin $u.must_change_password] [false false]
      for t in ($TOKENS | where name != raibid-image-push) {
        assert ($t.name in ($st.tokens.raibid-admin | columns)) $"($t.name) is not the admin's"
      }
      # Package write, through a team with only the packages unit, in acme and (created) octo; not in raibid.
      assert ("octo" in ($st.orgs | columns)) "the publishing organisation octo was not created"
      for o in [acme octo] {
        let teams = ($st.teams | values | where org == $o)
        assert equal ($teams | get name) [$PACKAGES_TEAM] $"($o)'s teams"
        let tm = ($teams | first)
        assert equal [$tm.permission $tm.units_map $tm.includes_all_repositories $tm.can_create_org_repo $tm.members] [write {"repo.packages": write} false false [$PUSH_USER]] $"($o)/($PACKAGES_TEAM)"
      }
      assert equal ($st.teams | values | where org == raibid) [] "the push user was put into raibid"
      # What the password was is in no file bootstrap keeps.
      let pw = $u.password
      let files = (glob ($env.RAIBID_CONFIG_DIR | path join "**" "*") | append (glob ($ctx.tmp | path join "**" "*")) | where {|p| ($p | path type) == file })
      assert equal ($files | where {|p| open --raw $p | str contains $pw }) [] "the push user's password landed in a file"
      # The probe is content, and the Secret's value is recognised as the push user's token (an admin's is not).
      assert equal (push-user-problems $ctx) []
      assert equal (push-token-verified $ctx $values.raibid-image-push) $values.raibid-image-push
      assert equal (push-token-verified $ctx "0000000000000000000000000000000000adm1n0") null
      # Re-running changes nothing in Gitea's users, organisations and teams.
      let before = (calls $f.gitea | length)
      let again = ($ctx | update tmp (mktemp -d -t raibid-tokens-XXXXXX))
      let step = (do (all-stages | where name == tokens | first | get steps) $again | where {|s| $s.show | str starts-with "Gitea user" } | first)
      do $step.run
      let writes = (calls $f.gitea | skip $before | where method != GET)
      assert equal $writes [] $"a re-run changed Gitea: ($writes | select method path | to nuon)"
      # --rotate replaces the push token (still the push user's, still write:package only).
      let rotated = (run-gitea-token-steps (push-ctx $f.gitea.url [acme octo] --rotate))
      let st2 = (fake-get $f.gitea state)
      assert ($rotated.raibid-image-push != $values.raibid-image-push) "--rotate kept the push token"
      assert equal ($st2.tokens | get $PUSH_USER) {raibid-image-push: $rotated.raibid-image-push}
      assert equal ($st2.token_scopes | get $PUSH_USER | get raibid-image-push) [write:package]
      # Someone made the push user a site admin and put it into raibid: the next run undoes both.
      with-env {RAIBID_GITEA_URL: $f.gitea.url} {
        let b = {username: raibid-admin, password: pw}
        gitea call PATCH $"/admin/users/($PUSH_USER)" --basic $b --body {admin: true} | ignore
        let tid = (gitea call POST "/orgs/raibid/teams" --basic $b --body {name: ops, permission: write}).body.id
        gitea call PUT $"/teams/($tid)/members/($PUSH_USER)" --basic $b | ignore
      }
      assert equal ((push-user-problems $ctx) | length) 2 "the probe misses the admin flag or the raibid membership"
      let fix = (do (all-stages | where name == tokens | first | get steps) ($ctx | update tmp (mktemp -d -t raibid-tokens-XXXXXX)) | where {|s| $s.show | str starts-with "Gitea user" } | first)
      do $fix.run
      let st3 = (fake-get $f.gitea state)
      assert equal ($st3.users | get $PUSH_USER | get is_admin) false
      assert equal ($st3.teams | values | where org == raibid | get members | flatten) []
      assert equal (push-user-problems $ctx) []
      # A user's namespace and raibid's own cannot be granted.
      assert equal (error-code-of { run-gitea-token-steps (push-ctx $f.gitea.url [someone]) }) push_org_is_user
      assert equal (error-code-of { run-gitea-token-steps (push-ctx $f.gitea.url [raibid]) }) push_org_reserved
      assert-no-violations $f.gitea
    }
  }
}

@test
def a_stage_failing_halfway_leaves_no_plaintext_token [] {
  let tmp = (mktemp -d -t raibid-stage-XXXXXX)
  let ctx = {tmp: $tmp}
  let store = ((secret-tmp $ctx) | path join tokens.json)
  let steps = [
    (nu-step "write the tokens" {|| mkdir (secret-tmp $ctx); '{"raibid-agent": "plaintext"}' | save $store })
    (nu-step "fail" {|| error make {msg: "boom"} })
    (nu-step "never" {|| "x" | save ($tmp | path join never) })
  ]
  let err = (try { run-steps $ctx $steps; null } catch {|e| $e })
  assert ($err != null) "the failure was swallowed"
  assert ($err.msg | str contains "boom") $err.msg
  assert not ($store | path exists) "tokens.json outlived the failed stage"
  assert not ($tmp | path join never | path exists)
  # and after a stage that succeeds
  run-steps $ctx [(nu-step "write" {|| mkdir (secret-tmp $ctx); "t" | save $store })]
  assert not ((secret-tmp $ctx) | path exists)
  rm -rf $tmp
}

@test
def age_key_kind_must_be_readable_by_the_pinned_sops_and_flux [] {
  assert equal (age-key-kind "age1pq1qyqszqgpqyqszqgp") "post-quantum"
  assert equal (age-key-kind "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq") "x25519"
  let pins = (load-pins)
  # Today's pins (sops 3.12, Flux 2.9) read both kinds, so age 1.4's default post-quantum key is fine.
  assert equal (age-kind-problems "post-quantum" $pins) []
  assert equal (age-kind-problems "x25519" $pins) []
  # The pins before issue 21 (sops 3.11.0, Flux 2.7.5) cannot: both are named.
  let old = ($pins | update SOPS_VERSION "3.11.0" | update FLUX_VERSION "2.7.5")
  let p = (age-kind-problems "post-quantum" $old)
  assert equal ($p | length) 2 $"($p)"
  assert ($p.0 | str contains "sops 3.11.0 reads post-quantum age keys only from 3.12.0")
  assert ($p.1 | str contains "Flux 2.7.5 decrypts post-quantum age keys only from 2.9.0")
  # The probe refuses such a key with a message that says what to do.
  let f = (fixture finished)
  let sys = (open $f)
  $sys | update commands ($sys.commands | each {|c| if ($c.argv | first 2) == [age-keygen -y] { $c | update stdout "age1pq1qyqszqgpqyqszqgp\n" } else { $c } }) | to nuon | save -f $f
  let r = (with-clean-env (fake-env $f) { plan ((context) | update s.pins $old) [age-key] })
  assert equal $r.0.action fail
  assert ($r.0.reason | str contains "post-quantum key that the pinned tools cannot read") $r.0.reason
  rm -f $f
}

@test
def node_flags_ufw_and_traefik [] {
  let server = (render-k3s-config 20 119 {name: spark, ip: "192.168.1.20", iface: enP7s7, tls_san: [spark "192.168.1.20"]} | from yaml)
  assert equal [$server.node-ip $server.flannel-iface $server.tls-san $server.node-name] ["192.168.1.20" enP7s7 [spark "192.168.1.20"] spark]
  let agent = (render-k3s-config 20 119 {name: spark-2, ip: "192.168.1.21", iface: enP7s7, server_url: "https://192.168.1.20:6443", token_file: "/etc/rancher/k3s/agent-token"} | from yaml)
  assert equal [$agent.server $agent.token-file ($agent.tls-san? | default null) ($agent.secrets-encryption? | default null)] ["https://192.168.1.20:6443" /etc/rancher/k3s/agent-token null null]
  # ufw(8): inactive needs nothing; active without k3s' rules needs all of them; the finished fixture's has them.
  assert equal (ufw-missing "Status: inactive\n") []
  assert equal (ufw-missing "Status: active\n\nTo  Action  From\n22/tcp  ALLOW  Anywhere\n" | length) ($UFW_RULES | length)
  let t = (render-traefik-config | from yaml)
  assert equal $t.kind HelmChartConfig
  assert equal ($t.spec.valuesContent | from yaml | get ports.web.transport.respondingTimeouts.readTimeout) 1800s
  # The plan pins k3s to the wired port and warns about Wi-Fi.
  let p = (plan-for fresh)
  let k3s = ($p | where stage == k3s | first)
  assert ($k3s.commands | any {|c| $c | str contains "node-ip 192.168.1.20 on enP7s7" }) ($k3s.commands | str join "\n")
  assert ($k3s.commands | any {|c| $c | str contains "raibid-traefik-config.yaml" })
  # Ubuntu 24.04 restricts user namespaces; the fresh fixture has no buildah profile: bootstrap installs one.
  assert ($k3s.commands | any {|c| $c | str contains "apparmor_parser -r -W /etc/apparmor.d/raibid-buildah-host" }) ($k3s.commands | str join "\n")
  let wifi = (evaluate-checks {os: "Ubuntu 24.04.3 LTS", iface: wlP9s9, arch: aarch64, cores: 20, mem_bytes: (125516596 * 1024), disk_free: (3000 * 1024 * 1024 * 1024), cgroup_fs: cgroup2fs, listening: [], uid: 0, sudo_ok: true, tools: {}, k3s_version: null} (load-pins))
  assert equal ($wifi | where check == "node interface" | get 0.ok) false
}

# --- a second Spark (issue 21 §3) ---------------------------------------------------------------------------

@test
def join_prepares_the_node_like_node_one_with_the_agent_token [] {
  let dir = (mktemp -d -t raibid-join-XXXXXX)
  let token = ($dir | path join agent-token)
  let reg = ($dir | path join registries.yaml)
  "K10abc::node:agentsecret\n" | save $token
  render-registries "git.raibid.internal" {username: raibid-admin, password: recorded-registry-token} | save $reg
  # The new host: a fresh Spark called spark-2 (the fresh fixture with its own hostname).
  let f = (fixture fresh)
  let sys = (open $f)
  $sys | update facts.hostname spark-2 | to nuon | save -f $f
  let p = (with-clean-env (fake-env $f) {
    let ctx = (context | update join (join-spec "https://192.168.1.20:6443" $token $reg))
    plan $ctx (join-stages)
  })
  assert equal ($p | get stage) [preflight k3s]
  assert equal ($p | where action != run | get stage) [] ($p | to nuon)
  let cmds = ($p | where stage == k3s | first | get commands)
  let text = ($cmds | str join "\n")
  # An agent: the token installed from the file (never on a command line), install.sh as agent, no kubeconfig, no Traefik.
  assert ($text | str contains $"sudo install -m 0600 /dev/stdin /etc/rancher/k3s/agent-token <<< \(the agent token from ($token)\)") $text
  assert ($text | str contains "INSTALL_K3S_EXEC=agent")
  assert not ($text | str contains "agentsecret") "the token was printed"
  assert not ($text | str contains "k3s.yaml")
  assert not ($text | str contains "traefik")
  # The same host preparation as node 1: caches, both seccomp profiles, the AppArmor profile, registries, hosts.
  for want in ["/var/lib/raibid/cache" "/var/lib/raibid/image-cache" "raibid-agent.json" "raibid-buildah.json" "apparmor_parser -r -W /etc/apparmor.d/raibid-agent" "registries.yaml" "/etc/hosts"] {
    assert ($text | str contains $want) $"join does not prepare ($want)"
  }
  # Refusals: the server token, a wrong URL.
  "K10abc::server:serversecret\n" | save -f $token
  assert equal (error-code-of { join-spec "https://192.168.1.20:6443" $token $reg }) server_token
  assert equal (error-code-of { join-spec "192.168.1.20" $token $reg }) bad_server_url
  rm -rf $dir $f
}

@test
def remove_node_drains_first_and_needs_force [] {
  let s = (remove-node-steps spark-2 70min | get show)
  assert equal $s ["kubectl drain spark-2 --ignore-daemonsets --delete-emptydir-data --timeout=4200s" "kubectl delete node spark-2 --wait=true"]
  let out = (do { ^$nu.current-exe --no-config-file ($REPO_ROOT | path join scripts bootstrap.nu) remove-node spark-2 } | complete)
  assert equal $out.exit_code 1
  assert ($out.stderr | str contains "needs_force") $out.stderr
  assert ($out.stdout | str contains "kubectl drain spark-2")
}

# Issue 21 §3: a joined node's burst pool is written into the GitOps tree by the same definition that made the
# checked-in ones, listed in the overlay, rendered by kustomize, and removed again without a trace.
@test
def node_pools_are_written_listed_rendered_and_removed [] {
  use ../lib/node_pools.nu *
  for n in [spark spark-2] {
    assert equal (node-pool-kustomization $n) (open --raw ($REPO_ROOT | path join apps dgx-spark nodes $n kustomization.yaml)) $"nodes/($n) differs from node-pool-kustomization"
  }
  let tmp = (mktemp -d -t raibid-nodes-XXXXXX)
  cp -r ($REPO_ROOT | path join apps) $tmp
  let k = ($tmp | path join apps dgx-spark kustomization.yaml)
  let before = (open --raw $k)
  assert equal (node-pools $tmp) [spark spark-2]
  let changed = (add-node-pool $tmp spark-3)
  assert equal ($changed | length) 2 ($changed | str join "; ")
  assert equal (node-pools $tmp) [spark spark-2 spark-3]
  # Every line of the overlay is kept (comments included); the new one follows the last node.
  let after = (open --raw $k | lines)
  assert equal ($after | where {|l| $l != "  - nodes/spark-3" }) ($before | lines)
  assert equal (add-node-pool $tmp spark-3) [] "adding twice changes nothing"
  # As kustomize-controller builds: no load restrictions (the component references the base's files).
  let rendered = (^kubectl kustomize --load-restrictor LoadRestrictionsNone ($tmp | path join apps dgx-spark) | complete)
  assert equal $rendered.exit_code 0 $rendered.stderr
  let jobs = ($rendered.stdout | from yaml | where kind == ScaledJob | get metadata.name)
  assert ("raibid-agent-spark-3" in $jobs) ($jobs | str join ", ")
  assert ($rendered.stdout | str contains "raibid:jobs:node:spark-3")
  remove-node-pool $tmp spark-3 | ignore
  assert equal (open --raw $k) $before "removing restores the overlay byte for byte"
  assert not ($tmp | path join apps dgx-spark nodes spark-3 | path exists)
  assert equal (remove-node-pool $tmp spark-3) []
  # Refusals: a name Kubernetes would refuse, the last pool.
  assert equal (error-code-of { add-node-pool $tmp "Spark_3" }) bad_argument
  remove-node-pool $tmp spark-2 | ignore
  assert equal (error-code-of { remove-node-pool $tmp spark }) bad_argument
  rm -rf $tmp
  let out = (do { ^$nu.current-exe --no-config-file ($REPO_ROOT | path join scripts bootstrap.nu) nodes } | complete)
  assert equal $out.exit_code 0 $out.stderr
  assert ($out.stdout | str contains "spark-2") $out.stdout
}

# --- the GitHub token for commit statuses (issue 22) -------------------------------------------------------

@test
def the_github_token_goes_into_the_dispatcher_secret_only_when_given_and_is_kept [] {
  let base = {RAIBID_API_TOKEN: a, RAIBID_GITEA_TOKEN: g}
  # Not given, none in the Secret: no key (the Deployment reads it with optional: true).
  assert equal (dispatcher-secret-values $base null null) $base
  assert equal (dispatcher-secret-values $base "" {RAIBID_API_TOKEN: a}) $base
  # Given: written.
  assert equal (dispatcher-secret-values $base "github_pat_1" null | get RAIBID_GITHUB_TOKEN) "github_pat_1"
  # A re-run without it keeps the Secret's; a new one replaces it.
  let existing = ($base | insert RAIBID_GITHUB_TOKEN "github_pat_1")
  assert equal (dispatcher-secret-values $base null $existing) $existing
  assert equal (dispatcher-secret-values $base "github_pat_2" $existing | get RAIBID_GITHUB_TOKEN) "github_pat_2"
  # The key is one the documented layout names.
  let keys = ($SECRET_FILES | where name == raibid-dispatcher | first | get keys)
  assert ("RAIBID_GITHUB_TOKEN" in $keys) $"($keys)"
}
