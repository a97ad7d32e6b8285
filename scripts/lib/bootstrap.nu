# The pure parts of the bootstrap and its building blocks: repository settings, rendered host config (k3s,
# registries, /etc/hosts), preflight evaluation, stage selection, plan steps and deadline waits.
# The stages themselves are in stages.nu; scripts/bootstrap.nu is the command.

use errors.nu [fail run-argv]
use contract.nu [repo-root]
use pins.nu [load-pins]
use cluster.nu *
use log.nu

# --- repository settings -----------------------------------------------------------------------------

# Replace `${NAME}` by the cluster settings (Flux's postBuild substitution, for values bootstrap needs).
@example "the Gitea host" { "git.${RAIBID_DOMAIN}" | substitute {RAIBID_DOMAIN: "raibid.internal"} } --result "git.raibid.internal"
export def substitute [vars: record]: string -> string {
  let text = $in
  $vars | transpose k v | reduce --fold $text {|r, acc| $acc | str replace --all $"${($r.k)}" ($r.v | into string) }
}

def yaml-docs [file: path]: nothing -> list<any> {
  open --raw $file | from yaml | if ($in | describe) =~ '^(list|table)' { $in } else { [$in] } | compact
}

# Everything bootstrap reads from the repository: domain, cache path, ops repository, images, pins.
export def settings []: nothing -> record {
  let root = (repo-root)
  let cdir = ($root | path join clusters $CLUSTER)
  let vars = (open ($cdir | path join cluster-settings.yaml)).data
  let sync = (yaml-docs ($cdir | path join flux-system gotk-sync.yaml) | where kind == GitRepository | first)
  let ops_path = ($sync.spec.url | url parse | get path | str trim --char "/" | str replace --regex '\.git$' "" | split row "/")
  let domain = $vars.RAIBID_DOMAIN
  let images = ((open ($root | path join apps $CLUSTER kustomization.yaml)).images | each {|i|
    {
      name: $i.name
      ref: $"($i.newName | substitute $vars):($i.newTag)"
      containerfile: $"containers/($i.name | str replace --regex '^raibid-' '').Containerfile"
    }
  })
  {
    root: $root
    vars: $vars
    domain: $domain
    git_host: $"git.($domain)"
    ci_host: $"ci.($domain)"
    gitea_url: $"http://git.($domain)"
    dispatcher_url: $"http://ci.($domain)"
    cache_path: ($vars.RAIBID_CACHE_HOST_PATH? | default "/var/lib/raibid/cache")
    image_cache_path: ($vars.RAIBID_IMAGE_CACHE_HOST_PATH? | default "/var/lib/raibid/image-cache")
    ops: {owner: $ops_path.0, name: $ops_path.1, branch: $sync.spec.ref.branch, cluster_url: $sync.spec.url}
    images: $images
    # Gitea organisations whose repositories publish images through CI (ADR 0012): the image push user gets
    # package write there, and nowhere else. Comma- or space-separated in cluster-settings.yaml.
    publish_orgs: ($vars.RAIBID_IMAGE_PUBLISH_ORGS? | default "" | split row --regex '[,\s]+' | where {|o| $o | is-not-empty } | uniq)
    pins: (load-pins)
  }
}

# --- rendered host configuration -------------------------------------------------------------------------

# Kubelet reservations for the system and for k3s itself, scaled to the box: 5 % of the cores (at least
# half a core) and 3 % of the memory, rounded up (1–4 GiB) each. On the 20-core / 128 GB Spark: 1 CPU + 4 GiB each,
# so 18 CPU / ~118 GiB stay allocatable for Gitea, Redis, the dispatcher and the builds.
export def reservations [cores: int, mem_gib: int]: nothing -> record {
  let cpu_m = ([500 ($cores * 50)] | math max)
  let cpu = if $cpu_m mod 1000 == 0 { $"($cpu_m // 1000)" } else { $"($cpu_m)m" }
  let mem = ([1 ([4 (($mem_gib * 3 + 99) // 100)] | math min)] | math max)
  {cpu: $cpu, memory: $"($mem)Gi"}
}

# /etc/rancher/k3s/config.yaml, rendered from the box's size and the node's network. `node` is
# {name, ip, iface, tls_san: [..], server_url?, token_file?}: a server (the first Spark) names its API's
# addresses (tls-san); an agent (`bootstrap.nu join`) names the server and its agent-token file. node-ip and
# flannel-iface pin k3s to one interface: a Spark has 10GbE, two ConnectX-7 ports and Wi-Fi, and k3s would
# otherwise take the default route's, which may be the Wi-Fi.
export def render-k3s-config [cores: int, mem_gib: int, node: record = {}]: nothing -> string {
  let r = (reservations $cores $mem_gib)
  let agent = ($node.server_url? | default "" | is-not-empty)
  [
    "# Rendered by scripts/bootstrap.nu (stage k3s) from the repository; re-run the stage instead of editing."
    (if $agent { null } else { "write-kubeconfig-mode: \"0600\"" })
    (if $agent { null } else { "secrets-encryption: true" })
    (if ($node.name? | default "" | is-empty) { null } else { $"node-name: ($node.name)" })
    (if ($node.ip? | default "" | is-empty) { null } else { $"node-ip: ($node.ip)" })
    (if ($node.iface? | default "" | is-empty) { null } else { $"flannel-iface: ($node.iface)" })
    (if $agent { $"server: ($node.server_url)" } else { null })
    (if $agent { $"token-file: ($node.token_file)" } else { null })
    (if $agent or ($node.tls_san? | default [] | is-empty) { null } else { "tls-san:" })
    ...(if $agent { [] } else { $node.tls_san? | default [] | each {|s| $"  - ($s)" } })
    "kubelet-arg:"
    $"  - \"system-reserved=cpu=($r.cpu),memory=($r.memory),ephemeral-storage=20Gi\""
    $"  - \"kube-reserved=cpu=($r.cpu),memory=($r.memory),ephemeral-storage=10Gi\""
    "  - \"eviction-hard=memory.available<2Gi,nodefs.available<10%,imagefs.available<10%\""
    "  - \"container-log-max-size=50Mi\""
    "  - \"container-log-max-files=3\""
    ""
  ] | compact | str join "\n"
}

# k3s' packaged Traefik answers 60 s after a request started reading (Traefik 3's default
# respondingTimeouts.readTimeout): a large image push through git.<domain> takes longer. A HelmChartConfig in
# k3s' manifests directory sets the chart's values (k3s docs, "Customizing Packaged Components").
export def render-traefik-config []: nothing -> string {
  [
    "# Rendered by scripts/bootstrap.nu (stage k3s): Traefik timeouts for large image pushes to Gitea's registry."
    "apiVersion: helm.cattle.io/v1"
    "kind: HelmChartConfig"
    "metadata:"
    "  name: traefik"
    "  namespace: kube-system"
    "spec:"
    "  valuesContent: |-"
    "    ports:"
    "      web:"
    "        transport:"
    "          respondingTimeouts:"
    "            readTimeout: 1800s"
    "            writeTimeout: 1800s"
    "            idleTimeout: 180s"
    ""
  ] | str join "\n"
}

# The ufw rules k3s needs when ufw is active (k3s docs, "Requirements: Inbound Rules" and the ufw notes):
# the API server, the kubelet and flannel's VXLAN between nodes, and the pod and service CIDRs.
export const UFW_RULES = [
  [allow];
  [[6443/tcp]]
  [[10250/tcp]]
  [[8472/udp]]
  [[from 10.42.0.0/16 to any]]
  [[from 10.43.0.0/16 to any]]
]

# Which UFW_RULES an active ufw lacks, from `ufw status` (ufw(8): "Status: active" then one line per rule,
# e.g. "6443/tcp  ALLOW  Anywhere" or "Anywhere  ALLOW  10.42.0.0/16"); none when ufw is inactive.
export def ufw-missing [status: string]: nothing -> list<list<string>> {
  if not ($status | str contains "Status: active") { return [] }
  let ls = ($status | lines)
  $UFW_RULES | get allow | where {|r|
    let port = if $r.0 == from { null } else { $r.0 }
    let src = if $r.0 == from { $r.1 } else { null }
    not ($ls | any {|l| ($l =~ 'ALLOW') and (if $port != null { $l | str starts-with $port } else { $l | str contains $src }) })
  }
}

# /etc/rancher/k3s/registries.yaml: containerd pulls git.<domain> (Gitea's OCI registry) over HTTP,
# with Gitea credentials once bootstrap created them (stage tokens).
export def render-registries [git_host: string, auth: any]: nothing -> string {
  let doc = {mirrors: {$git_host: {endpoint: [$"http://($git_host)"]}}}
  let doc = if $auth == null { $doc } else { $doc | insert configs {$git_host: {auth: {username: $auth.username, password: $auth.password}}} }
  "# Rendered by scripts/bootstrap.nu (stages k3s, tokens): pull raibid images from Gitea's registry.\n" + ($doc | to yaml)
}

# The registry credentials an existing registries.yaml holds (kept when the k3s stage re-renders it).
export def registries-auth [text: any, git_host: string]: nothing -> any {
  if $text == null { return null }
  try { $text | from yaml | get -o configs | get -o $git_host | get -o auth } catch { null }
}

# /etc/hosts with one line (marked `# raibid-ci`) mapping the given hosts to the node.
export def render-hosts [current: string, hosts: list<string>, ip: string = "127.0.0.1"]: nothing -> string {
  let kept = ($current | lines | where {|l| not ($l | str ends-with "# raibid-ci") })
  $kept | append $"($ip) ($hosts | str join ' ') # raibid-ci" | append "" | str join "\n"
}

# Rewrite a secrets/kustomization.yaml to list exactly `files` (sorted), keeping its comment header.
export def render-secrets-kustomization [current: string, files: list<string>]: nothing -> string {
  let header = ($current | lines | take while {|l| $l | str starts-with "#" })
  let res = if ($files | is-empty) { ["resources: []"] } else { ["resources:"] | append ($files | sort | each {|f| $"  - ($f)" }) }
  $header | append ["apiVersion: kustomize.config.k8s.io/v1beta1" "kind: Kustomization"] | append $res | append "" | str join "\n"
}

# --- preflight -----------------------------------------------------------------------------------------

# The first x.y.z in a version banner ("flux: v2.7.5", "sops 3.11.0 (latest)", "v1.1.1").
@example "sops" { "sops 3.11.0 (latest)" | parse-version } --result "3.11.0"
export def parse-version []: string -> any {
  let m = ($in | parse --regex 'v?(?<v>\d+\.\d+\.\d+)')
  if ($m | is-empty) { null } else { $m.0.v }
}

# Is version a at least b (x.y.z)?
@example "sops" { version-at-least "3.12.0" "3.11.0" } --result true
export def version-at-least [a: string, b: string]: nothing -> bool { (version-cmp $a $b) >= 0 }

def version-cmp [a: string, b: string]: nothing -> int {
  let x = ($a | split row "." | each { into int })
  let y = ($b | split row "." | each { into int })
  for i in 0..2 {
    if ($x | get $i) < ($y | get $i) { return (-1) }
    if ($x | get $i) > ($y | get $i) { return 1 }
  }
  0
}

# The tools bootstrap needs: program, version command, pin name and how it must match, how to install.
export def required-tools []: nothing -> table {
  [
    [tool version_cmd pin match fix];
    [git [git --version] null any "apt-get install -y git"]
    [curl [curl --version] null any "apt-get install -y curl"]
    [sops [sops --version --disable-version-check] SOPS_VERSION at_least "install sops v$SOPS_VERSION from github.com/getsops/sops/releases, or `nix develop` (flake.nix)"]
    [age-keygen [age-keygen --version] AGE_VERSION at_least "apt-get install -y age, or `nix develop`"]
    [flux [flux version --client] FLUX_VERSION exact "curl -s https://fluxcd.io/install.sh | FLUX_VERSION=$FLUX_VERSION bash, or `nix develop`"]
    [buildah [buildah --version] null any "apt-get install -y buildah"]
  ]
}

# Judge the host facts: one row per check with ok, fatal and the fix.
export def evaluate-checks [host: record, pins: record]: nothing -> table {
  let gib = 1024 * 1024 * 1024
  let arch_ok = ($host.arch in [aarch64 arm64])
  let k3s_there = ($host.k3s_version != null)
  mut rows = [
    {check: architecture, ok: $arch_ok, fatal: ($host.arch not-in [aarch64 arm64 x86_64]), found: $host.arch, want: "aarch64 (DGX Spark)",
      fix: "raibid-ci targets ARM64; on x86_64 it works but builds x86_64 images"}
    {check: cores, ok: ($host.cores >= 20), fatal: ($host.cores < 4), found: $"($host.cores)", want: "20 (apps/dgx-spark sizing), at least 4",
      fix: "lower the agent counts in apps/dgx-spark/kustomization.yaml for a smaller box"}
    # A DGX Spark's 128 GB of LPDDR5x show as MemTotal ≈ 119.7 GiB (the GPU's carve-out and the kernel's own);
    # anything from 112 GiB is a Spark-sized box.
    {check: memory, ok: ($host.mem_bytes >= 112 * $gib), fatal: ($host.mem_bytes < 16 * $gib), found: $"(($host.mem_bytes / $gib) | math round --precision 1) GiB", want: "≈ 119.7 GiB (DGX Spark), at least 16",
      fix: "lower the agent sizes in apps/dgx-spark/kustomization.yaml for a smaller box"}
    {check: "disk /var/lib", ok: ($host.disk_free >= 200 * $gib), fatal: ($host.disk_free < 60 * $gib), found: $"($host.disk_free // $gib) GiB free", want: "200 GiB free, at least 60",
      fix: "free space under /var/lib (k3s images, Gitea's 50 GiB volume, build caches)"}
    {check: "cgroup v2", ok: ($host.cgroup_fs == "cgroup2fs"), fatal: true, found: $host.cgroup_fs, want: cgroup2fs,
      fix: "boot with systemd.unified_cgroup_hierarchy=1 (DGX OS 7 / Ubuntu 24.04 does by default)"}
    {check: "node interface", ok: (not ($host.iface? | default "" | str starts-with "wl")), fatal: false, found: ($host.iface? | default "unknown"), want: "a wired port (10GbE or ConnectX-7)",
      fix: "k3s would run over Wi-Fi: set RAIBID_NODE_IFACE to the 10GbE or a ConnectX-7 interface (ip -br link)"}
    {check: "operating system", ok: ($host.os? | default "" | str starts-with "Ubuntu 24.04"), fatal: false, found: ($host.os? | default "unknown"), want: "DGX OS 7 (Ubuntu 24.04)",
      fix: "raibid-ci is tested against DGX OS 7; other systemd distributions with cgroup v2 work but their AppArmor and firewall differ (docs/operations.md)"}
    {check: privileges, ok: ($host.uid == 0 or $host.sudo_ok), fatal: true, found: (if $host.uid == 0 { "root" } else if $host.sudo_ok { "sudo" } else { "no sudo" }), want: "root or passwordless sudo",
      fix: "run as a user with sudo rights (`sudo -v` first), or as root"}
  ]
  for p in [80 443 6443 10250] {
    let busy = ($p in $host.listening)
    $rows = ($rows | append {check: $"port ($p)", ok: ($k3s_there or not $busy), fatal: true,
      found: (if $k3s_there { "k3s" } else if $busy { "in use" } else { "free" }), want: "free (k3s, Traefik)",
      fix: $"stop what listens on ($p): sudo ss -ltnp 'sport = :($p)'"})
  }
  for t in (required-tools | where {|t| $t.tool in ($host.tools | columns) }) {
    let have = ($host.tools | get -o $t.tool)
    let want = if $t.pin == null { "any" } else { $pins | get -o $t.pin | default "?" }
    let ok = if $have == null { false } else if $t.match == "exact" { $have == $want } else if $t.match == "at_least" and $want != "?" { (version-cmp $have $want) >= 0 } else { true }
    $rows = ($rows | append {check: $"tool ($t.tool)", ok: $ok, fatal: true, found: ($have | default "missing"),
      want: (match $t.match { "exact" => $want, "at_least" => $">= ($want)", _ => "any" }), fix: ($t.fix | str replace --all '$SOPS_VERSION' ($pins.SOPS_VERSION? | default "") | str replace --all '$FLUX_VERSION' ($pins.FLUX_VERSION? | default ""))})
  }
  $rows
}

# --- stages and plans ------------------------------------------------------------------------------------

# The stages to run: all, `--only` one, or `--from` one to the end.
@example "from gitea on" { select-stages [a b c d] --from c } --result [c d]
export def select-stages [names: list<string>, --only: any = null, --from: any = null]: nothing -> list<string> {
  for s in ([$only $from] | compact) {
    if $s not-in $names {
      fail unknown_stage $"there is no stage '($s)'" --hint $"stages, in order: ($names | str join ' → ')"
    }
  }
  if $only != null and $from != null { fail bad_flags "--only and --from exclude each other" }
  if $only != null { return [$only] }
  if $from != null { return ($names | skip while {|n| $n != $from }) }
  $names
}

# Quote one argument the way a POSIX shell would need it (for display only: nothing runs through a shell).
export def shell-quote []: string -> string {
  if ($in =~ '^[A-Za-z0-9_./:=@%+,^-]+$') { $in } else { $"'($in | str replace --all "'" "'\\''")'" }
}

export def show-argv [argv: list<string>]: nothing -> string {
  $argv | each {|a| $a | shell-quote } | str join " "
}

# A plan step running an external command (argv, never a shell). `stdin` is data piped in (described in
# the plan by `stdin_desc`, never shown: it may be a secret); `save_to` writes stdout to a file.
export def ext-step [
  argv: list<string>
  --stdin: any = null
  --stdin-from: any = null       # closure computing stdin when the step runs (values made by earlier steps)
  --stdin-desc: string = ""
  --save-to: string = ""
  --extra-env: record = {}
  --cwd: string = ""
]: nothing -> record {
  let shown = ([
    (if ($cwd | is-not-empty) { $"cd ($cwd | shell-quote) &&" })
    (show-argv $argv)
    (if ($stdin_desc | is-not-empty) { $"<<< ($stdin_desc)" })
    (if ($save_to | is-not-empty) { $"> ($save_to | shell-quote)" })
  ] | compact | str join " ")
  {
    show: $shown
    run: {||
      let dir = if ($cwd | is-empty) { $env.PWD } else { $cwd }
      let input = if $stdin_from != null { do $stdin_from } else { $stdin }
      let out = (cd $dir; with-env $extra_env { run-argv $argv --stdin $input })
      if ($save_to | is-not-empty) { $out | save --force $save_to }
    }
  }
}

# A plan step done in Nushell (an API call, a file rewrite), described by `show`.
export def nu-step [show: string, run: closure]: nothing -> record { {show: $show, run: $run} }

# --- waits -----------------------------------------------------------------------------------------------

# Poll `check` (returns {ok, detail, inspect?}) until it is ok or the deadline passes. On timeout the error
# names the object and the commands that show why (the check's `inspect`, else `--inspect`).
export def wait-until [
  what: string                  # the object, e.g. "HelmRelease gitea/gitea"
  check: closure                # {|| {ok: bool, detail: string, inspect?: list<string>} }
  --timeout: duration = 5min    # deadline
  --interval: duration = 5sec   # between checks
  --inspect: list<string> = []  # commands to look at the object
]: nothing -> record {
  let start = (date now)
  mut last = {ok: false, detail: "not checked yet"}
  mut reported = (date now)
  loop {
    $last = (do $check)
    if $last.ok { return $last }
    if ((date now) - $start) >= $timeout { break }
    if ((date now) - $reported) >= 30sec {
      log info $"still waiting for ($what): ($last.detail)"
      $reported = (date now)
    }
    sleep $interval
  }
  let cmds = ($last.inspect? | default $inspect)
  fail wait_timeout $"($what) is not ready after ($timeout): ($last.detail)" --hint $"look at it with:\n  ($cmds | str join "\n  ")\nthen re-run this stage: nu scripts/bootstrap.nu --only ($env.RAIBID_STAGE? | default '<stage>')"
}

# Ready condition of a Kubernetes object's status (Flux objects, nodes), as {ok, detail}.
export def ready-condition [obj: record]: nothing -> record {
  let c = ($obj.status?.conditions? | default [] | where type == Ready)
  if ($c | is-empty) { return {ok: false, detail: "no Ready condition yet"} }
  let r = ($c | first)
  {ok: ($r.status == "True"), detail: ($"($r.reason? | default '') ($r.message? | default '')" | str trim)}
}
