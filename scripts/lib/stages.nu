# The bootstrap's stages, in order. Each stage has
#   probe: {|ctx| …} → {done: bool, reason: string}   reads the host (through system.nu) and changes nothing
#   steps: {|ctx| …} → [{show, run}]                   the exact commands, shown by --dry-run, run otherwise
# A stage whose probe says done is skipped (unless --force), so re-running bootstrap is safe.
# Order and the reasons for it: docs/operations.md ("What bootstrap does") and docs/adr/0003-*.md.

use errors.nu [fail run-argv]
use system.nu
use bootstrap.nu *
use cluster.nu *
use secrets.nu [write-config-secret config-file-name secret-or-null]
use gitea.nu
use log.nu

# The Gitea admin bootstrap creates (Gitea reserves the name `admin`).
export const GITEA_ADMIN = "raibid-admin"

# The Gitea user whose token the image agents push with (ADR 0012): no site admin, no member of `raibid` (the
# cluster's own images), package write only in the organisations of RAIBID_IMAGE_PUBLISH_ORGS, through a team
# of this name. The image agents' RAIBID_REGISTRY_USERNAME (apps/base/raibid/agent-image-config.yaml) is it.
export const PUSH_USER = "raibid-push"
export const PACKAGES_TEAM = "raibid-packages"

# Gitea tokens bootstrap creates: name, scopes, whose, where the value goes.
export const TOKENS = [
  [name scopes owner use];
  [raibid-owner [write:repository write:organization read:user] $GITEA_ADMIN "owner's copy (RAIBID_GITEA_TOKEN for mirror.nu)"]
  [raibid-dispatcher [write:repository read:user] $GITEA_ADMIN "Secret raibid-dispatcher (mirror-sync, commit statuses)"]
  [raibid-agent [read:repository] $GITEA_ADMIN "Secret raibid-agent (clones)"]
  [raibid-flux [read:repository] $GITEA_ADMIN "Secret flux-system (Flux reads the ops repository)"]
  [raibid-registry [read:package] $GITEA_ADMIN "registries.yaml (containerd pulls the raibid images)"]
  [raibid-image-push [write:package] $PUSH_USER "Secrets raibid-registry-push (agents push images and artifacts to Gitea's OCI registry) and raibid-dispatcher (artifact downloads)"]
]

# --- context and small helpers ---------------------------------------------------------------------------

# Everything the stages share: repository settings, host facts, paths and flags.
export def context [
  --force    # redo stages that are done
  --rotate   # replace every Gitea token (stage tokens), not only missing ones
]: nothing -> record {
  let s = (settings)
  let facts = (system facts)
  {
    s: $s
    facts: $facts
    force: $force
    rotate: $rotate
    # The interface k3s uses (node-ip, flannel-iface); empty: the default route's (docs/operations.md).
    node_iface: ($env.RAIBID_NODE_IFACE? | default "")
    join: null
    keyfile: ($env.SOPS_AGE_KEY_FILE? | default ($facts.home | path join .config sops age keys.txt))
    config_dir: $env.RAIBID_CONFIG_DIR
    kubeconfig: $env.RAIBID_KUBECONFIG
    tmp: ($nu.temp-dir | path join raibid-bootstrap)
  }
}

# Prefix a command with sudo unless running as root.
def priv [ctx: record, argv: list<string>]: nothing -> list<string> {
  if $ctx.facts.uid == 0 { $argv } else { ["sudo" ...$argv] }
}

def repo-path [ctx: record, rel: string]: nothing -> string { $ctx.s.root | path join $rel }

# A root-only file (registries.yaml is 0600): read directly as root, through `sudo -n cat` otherwise. Null only
# when the file does not exist; a sudo that cannot run (a password needed, no sudo rights) fails loudly: read as
# "missing", it used to re-render registries.yaml without its credentials and rotate every token (issue 21 §2).
export def read-root [ctx: record, path: string]: nothing -> any {
  if $ctx.facts.uid == 0 { return (system read $path) }
  let r = (system run-cmd [sudo -n cat $path])
  if $r.exit_code == 0 { return $r.stdout }
  if ($r.stderr | str contains "No such file or directory") { return null }
  fail sudo_failed $"could not read ($path) as root: ($r.stderr | str trim)" --hint "bootstrap runs sudo non-interactively (sudo -n): run `sudo -v` first, or allow the owner passwordless sudo, or run bootstrap as root; nothing was changed"
}

# `kubectl … -o json` as a record, or null (no cluster yet, no such object).
def kget [args: list<string>]: nothing -> any {
  let r = (system run-cmd (["kubectl"] | append $args | append [-o json]))
  if $r.exit_code != 0 { return null }
  $r.stdout | from json
}

def config-copy [ctx: record, name: string]: nothing -> string {
  $ctx.config_dir | path join (config-file-name $name)
}

def admin-basic-or-null [ctx: record]: nothing -> any {
  let pw = (system read (config-copy $ctx GITEA_ADMIN_PASSWORD))
  if $pw == null { null } else { {username: $GITEA_ADMIN, password: ($pw | str trim)} }
}

def admin-basic [ctx: record]: nothing -> record {
  let pw = (system read (config-copy $ctx GITEA_ADMIN_PASSWORD))
  if $pw == null {
    fail secret_missing $"the Gitea admin password is not in (config-copy $ctx GITEA_ADMIN_PASSWORD)" --hint "run the secrets stage: nu scripts/bootstrap.nu --only secrets"
  }
  {username: $GITEA_ADMIN, password: ($pw | str trim)}
}

def basic-header [b: record]: nothing -> record {
  {Authorization: $"Basic ($'($b.username):($b.password)' | encode base64)"}
}

# A pipeline of external commands (`a | b`), each an argv; the data flows through Nushell, not a shell.
def pipe-step [cmds: list<list<string>>, --cwd: string = ""]: nothing -> record {
  nu-step (($cmds | each {|c| show-argv $c }) | str join " | " | if ($cwd | is-empty) { $in } else { $"cd ($cwd) && ($in)" }) {||
    let dir = if ($cwd | is-empty) { $env.PWD } else { $cwd }
    cd $dir
    $cmds | reduce --fold null {|c, input| run-argv $c --stdin $input }
    | ignore
  }
}

# Commit `paths` (relative to the repository root) if they changed; identity falls back to raibid-bootstrap.
def commit-step [ctx: record, paths: list<string>, message: string]: nothing -> record {
  let root = $ctx.s.root
  nu-step $"git add ($paths | str join ' ') && git commit -m '($message)' \(if changed\)" {||
    run-argv ([git -C $root add --] | append $paths) | ignore
    let staged = (do { ^git -C $root diff --cached --quiet -- ...$paths } | complete)
    if $staged.exit_code == 0 { return }
    let ident = if ((do { ^git -C $root config user.email } | complete).stdout | str trim | is-empty) {
      [-c user.name=raibid-bootstrap -c user.email=bootstrap@raibid.invalid]
    } else { [] }
    run-argv ([git -C $root] | append $ident | append [commit -m $message --] | append $paths) | ignore
    log ok $"committed: ($message)"
  }
}

def ok [reason: string] { {done: true, reason: $reason} }
def todo [reason: string] { {done: false, reason: $reason} }

def random-hex [bytes: int = 32]: nothing -> string { random binary $bytes | encode hex | str lowercase }

# --- preflight -------------------------------------------------------------------------------------------

def k3s-version []: nothing -> any {
  let r = (system run-cmd [k3s --version])
  if $r.exit_code != 0 { return null }
  $r.stdout | parse --regex '(?<v>v\d+\.\d+\.\d+\+k3s\d+)' | get -o 0.v
}

# The k3s service of this node: `k3s` on the server, `k3s-agent` on a joined node (k3s' install.sh names them so).
def k3s-unit [ctx: record]: nothing -> string { if ($ctx.join? | default null) == null { "k3s" } else { "k3s-agent" } }

# systemctl(1) is-active: prints the state, exit 0 only when active (3 inactive, 4 no such unit).
def k3s-active [unit: string = "k3s"]: nothing -> bool {
  ((system run-cmd [systemctl is-active $unit]).stdout | str trim) == "active"
}

# The tools a joining node needs (it builds nothing and holds no secrets): the others are node 1's.
const JOIN_TOOLS = [git curl]

# What preflight looks at, read through system.nu.
export def gather-host [ctx: record]: nothing -> record {
  let mem_kb = (system read /proc/meminfo | default "" | parse --regex 'MemTotal:\s+(?<kb>\d+)' | get -o 0.kb | default "0" | into int)
  let df = ((system run-cmd [df --output=avail -B1 /var/lib]).stdout | lines | last | default "0" | str trim)
  let listening = ((system run-cmd [ss -Htln]).stdout | lines
    | each {|l| $l | split row --regex '\s+' | get -o 3 | default "" | parse --regex ':(?<p>\d+)$' | get -o 0.p }
    | compact | each { into int } | uniq)
  let joining = (($ctx.join? | default null) != null)
  let tools = (required-tools | where {|t| (not $joining) or $t.tool in $JOIN_TOOLS } | reduce --fold {} {|t, acc|
    let v = if (system which-path $t.tool) == null { null } else {
      let r = (system run-cmd $t.version_cmd)
      if $r.exit_code == 0 { $"($r.stdout)($r.stderr)" | parse-version } else { null }
    }
    $acc | insert $t.tool $v
  })
  let osr = (system read /etc/os-release | default "" | lines | parse --regex '^PRETTY_NAME="?(?<v>[^"]*)"?$' | get -o 0.v)
  {
    os: $osr
    iface: (node-net $ctx).iface
    arch: ((system run-cmd [uname -m]).stdout | str trim)
    cores: ((system run-cmd [nproc]).stdout | str trim | into int)
    mem_bytes: ($mem_kb * 1024)
    disk_free: ($df | into int)
    cgroup_fs: ((system run-cmd [stat -fc %T /sys/fs/cgroup]).stdout | str trim)
    listening: $listening
    uid: $ctx.facts.uid
    sudo_ok: (if $ctx.facts.uid == 0 { true } else { (system run-cmd [sudo -n "true"]).exit_code == 0 })
    tools: $tools
    k3s_version: (k3s-version)
  }
}

def preflight-probe [ctx: record]: nothing -> record {
  let host = (gather-host $ctx)
  let checks = (evaluate-checks $host $ctx.s.pins)
  let bad = ($checks | where {|c| (not $c.ok) and $c.fatal })
  let pin = $ctx.s.pins.K3S_VERSION
  if ($bad | is-not-empty) {
    return (todo $"to fix: ($bad | each {|c| $"($c.check) \(($c.found)\)" } | str join ', ')")
  }
  if $host.k3s_version == $pin and (k3s-active (k3s-unit $ctx)) {
    ok $"k3s ($pin) is running and every tool is present"
  } else {
    todo "fresh host: check architecture, cores, memory, disk, ports, cgroup v2 and tools"
  }
}

def preflight-steps [ctx: record]: nothing -> list<record> {
  [(nu-step "check the host and the tools (a table; missing tools with the command that installs them)" {||
    let checks = (evaluate-checks (gather-host $ctx) $ctx.s.pins)
    print -e ($checks | select check ok found want | table --index false)
    let warn = ($checks | where {|c| (not $c.ok) and (not $c.fatal) })
    for w in $warn { log warn $"($w.check): ($w.found), want ($w.want) — ($w.fix)" }
    let bad = ($checks | where {|c| (not $c.ok) and $c.fatal })
    if ($bad | is-not-empty) {
      fail preflight_failed $"the host is not ready: ($bad | get check | str join ', ')" --hint ($bad | each {|c| $"($c.check): ($c.fix)" } | str join "\n")
    }
  })]
}

# --- k3s -------------------------------------------------------------------------------------------------

# The node files every agent pod needs (ADR 0002, 0006, 0014), from the repository: the Localhost seccomp
# profiles (pods name them `profiles/<file>`, relative to the kubelet's seccomp root) and the AppArmor profile
# with `userns,` and `mount` (pods name it `raibid-agent`; loaded with apparmor_parser). Same on every node.
export const NODE_PROFILES = [
  [src node what];
  ["infrastructure/configs/seccomp/raibid-buildah.json" "/var/lib/kubelet/seccomp/profiles/raibid-buildah.json" "the image agents' seccomp profile (rootless Buildah)"]
  ["infrastructure/configs/seccomp/raibid-agent.json" "/var/lib/kubelet/seccomp/profiles/raibid-agent.json" "the Rust agents' seccomp profile (bubblewrap)"]
  ["infrastructure/configs/apparmor/raibid-agent" "/etc/apparmor.d/raibid-agent" "the agents' AppArmor profile (userns, mount)"]
]
const APPARMOR_PROFILE = "raibid-agent"
const APPARMOR_LOADED = "/sys/kernel/security/apparmor/profiles"

const TRAEFIK_CONFIG = "/var/lib/rancher/k3s/server/manifests/raibid-traefik-config.yaml"

# Ubuntu 24.04 (kernel.apparmor_restrict_unprivileged_userns=1) lets a program create user namespaces only under
# an AppArmor profile that says `userns,`. The images stage runs rootless Buildah on the host: Ubuntu's apparmor
# package ships such a profile for it (/etc/apparmor.d/buildah); where it is missing, bootstrap installs the
# form upstream projects ship for their binaries (runc, rootlesskit: `flags=(unconfined) { userns, }`).
const USERNS_RESTRICT = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
const BUILDAH_HOST_PROFILE = "/etc/apparmor.d/raibid-buildah-host"
const BUILDAH_HOST_PROFILE_TEXT = "# Installed by scripts/bootstrap.nu (stage k3s): rootless Buildah may create user namespaces (Ubuntu 24.04).\nabi <abi/4.0>,\ninclude <tunables/global>\n\n/usr/bin/buildah flags=(unconfined) {\n  userns,\n\n  include if exists <local/raibid-buildah-host>\n}\n"

# Does AppArmor let the host's Buildah create user namespaces?
def buildah-userns-ok []: nothing -> bool {
  let restricted = ((system read $USERNS_RESTRICT | default "0" | str trim) == "1")
  (not $restricted) or (system exists /etc/apparmor.d/buildah) or ((system read $BUILDAH_HOST_PROFILE) == $BUILDAH_HOST_PROFILE_TEXT)
}

# A root-only probe command: as root directly, else `sudo -n` (never prompts). Fails loudly when sudo refuses.
def priv-probe [ctx: record, argv: list<string>]: nothing -> record {
  let r = (system run-cmd (if $ctx.facts.uid == 0 { $argv } else { [sudo -n ...$argv] }))
  if $r.exit_code != 0 and ($r.stderr | str contains "sudo:") {
    fail sudo_failed $"could not run `($argv | str join ' ')` as root: ($r.stderr | str trim)" --hint "run `sudo -v` first, allow the owner passwordless sudo, or run bootstrap as root; nothing was changed"
  }
  $r
}

# The node's interface and IPv4 address (ip(8) with -j: JSON): RAIBID_NODE_IFACE, else the default route's.
export def node-net [ctx: record]: nothing -> record {
  let iface = if ($ctx.node_iface? | default "" | is-not-empty) { $ctx.node_iface } else {
    let r = (system run-cmd [ip -j -4 route show default])
    if $r.exit_code != 0 { "" } else { $r.stdout | from json | get -o 0.dev | default "" }
  }
  if ($iface | is-empty) { return {iface: "", ip: ""} }
  let a = (system run-cmd [ip -j -4 addr show dev $iface])
  let ip = if $a.exit_code != 0 { "" } else {
    $a.stdout | from json | get -o 0.addr_info | default [] | where {|x| ($x.family? | default "") == inet } | get -o 0.local | default ""
  }
  {iface: $iface, ip: $ip}
}

# What this node is in the cluster: its name and network, and for an agent (join) the server and token file.
export def node-spec [ctx: record]: nothing -> record {
  let net = (node-net $ctx)
  let base = {name: $ctx.facts.hostname, ip: $net.ip, iface: $net.iface}
  if ($ctx.join? | default null) == null {
    $base | insert tls_san ([$ctx.facts.hostname $net.ip] | where {|x| $x | is-not-empty })
  } else {
    $base | insert server_url $ctx.join.server_url | insert token_file $ctx.join.token_file
  }
}

def host-files [ctx: record]: nothing -> record {
  let host = {cores: ((system run-cmd [nproc]).stdout | str trim | into int)
    mem_gib: ((system read /proc/meminfo | default "" | parse --regex 'MemTotal:\s+(?<kb>\d+)' | get -o 0.kb | default "0" | into int) // (1024 * 1024))}
  let reg_now = (read-root $ctx /etc/rancher/k3s/registries.yaml)
  let hosts_now = (system read /etc/hosts | default "")
  let server = (($ctx.join? | default null) == null)
  let auth = if $server { registries-auth $reg_now $ctx.s.git_host } else {
    # A joining node pulls with the same credentials as node 1: its registries.yaml, copied (--registries).
    let a = (registries-auth (open --raw $ctx.join.registries_src) $ctx.s.git_host)
    if $a == null { fail join_registries $"($ctx.join.registries_src) has no credentials for ($ctx.s.git_host)" --hint "copy /etc/rancher/k3s/registries.yaml from the first Spark after its tokens stage (sudo cat … | ssh this-host 'cat > registries.yaml')" }
    $a
  }
  {
    token: (if $server { null } else { open --raw $ctx.join.token_src | str trim })
    token_now: (if $server { null } else { read-root $ctx $ctx.join.token_file | default "" | str trim })
    node: (node-spec $ctx)
    ufw_missing: (ufw-missing ((priv-probe $ctx [ufw status]).stdout))
    traefik: (if $server { render-traefik-config } else { null })
    buildah_userns: (if $server { buildah-userns-ok } else { true })
    traefik_now: (if $server { system read $TRAEFIK_CONFIG } else { null })
    config: (render-k3s-config $host.cores $host.mem_gib (node-spec $ctx))
    registries: (render-registries $ctx.s.git_host $auth)
    hosts: (render-hosts $hosts_now [$ctx.s.git_host $ctx.s.ci_host])
    config_now: (system read /etc/rancher/k3s/config.yaml)
    registries_now: $reg_now
    hosts_now: $hosts_now
    profiles: ($NODE_PROFILES | each {|p| $p | insert want (open --raw (repo-path $ctx $p.src)) | insert now (system read $p.node) })
  }
}

def k3s-probe [ctx: record]: nothing -> record {
  let pin = $ctx.s.pins.K3S_VERSION
  let v = (k3s-version)
  if $v == null { return (todo "k3s is not installed") }
  if $v != $pin { return (todo $"k3s ($v) is installed, the pin is ($pin)") }
  if not (k3s-active (k3s-unit $ctx)) { return (todo $"the (k3s-unit $ctx) service is not active") }
  let f = (host-files $ctx)
  if $f.token != $f.token_now { return (todo $"the agent token ($ctx.join.token_file) is missing or differs from ($ctx.join.token_src)") }
  if $f.config_now != $f.config { return (todo "/etc/rancher/k3s/config.yaml differs from the rendered one") }
  if $f.registries_now != $f.registries { return (todo "/etc/rancher/k3s/registries.yaml differs from the rendered one") }
  if $f.hosts_now != $f.hosts { return (todo $"/etc/hosts does not map ($ctx.s.git_host) and ($ctx.s.ci_host)") }
  if ($f.ufw_missing | is-not-empty) { return (todo $"ufw is active and lacks k3s' rules: ($f.ufw_missing | each {|r| $r | str join ' ' } | str join ', ')") }
  if $f.traefik_now != $f.traefik { return (todo $"Traefik's timeouts ($TRAEFIK_CONFIG) are missing or differ") }
  if not $f.buildah_userns { return (todo $"AppArmor restricts user namespaces \(($USERNS_RESTRICT) = 1\) and no profile lets /usr/bin/buildah create them") }
  for p in $f.profiles {
    if $p.now != $p.want { return (todo $"($p.what) ($p.node) is missing or differs from ($p.src)") }
  }
  let loaded = (system read $APPARMOR_LOADED | default "" | lines | any {|l| $l | str starts-with $"($APPARMOR_PROFILE) \(enforce\)" })
  if not $loaded { return (todo $"AppArmor profile ($APPARMOR_PROFILE) is not loaded \(($APPARMOR_LOADED)\)") }
  for dir in [$ctx.s.cache_path $ctx.s.image_cache_path] {
    let owner = ((system run-cmd [stat -c %u:%g $dir]).stdout | str trim)
    if $owner != "1000:1000" { return (todo $"the cache directory ($dir) is missing or not owned by 1000:1000") }
  }
  if ($ctx.join? | default null) == null and not (system exists $ctx.kubeconfig) { return (todo $"no kubeconfig at ($ctx.kubeconfig)") }
  ok $"k3s ($pin) active, config, registries, /etc/hosts and cache directory as rendered"
}

def k3s-steps [ctx: record]: nothing -> list<record> {
  let pin = $ctx.s.pins.K3S_VERSION
  let f = (host-files $ctx)
  let installer = ($ctx.tmp | path join k3s-install.sh)
  let tag = ($pin | str replace --all "+" "%2B")
  let gid = ((system run-cmd [id -g]).stdout | str trim)
  let reinstall = ((k3s-version) != $pin)
  let joining = (($ctx.join? | default null) != null)
  let unit = (k3s-unit $ctx)
  [
    (ext-step (priv $ctx [install -d -m "0755" /etc/rancher/k3s]))
    (if $joining { ext-step (priv $ctx [install -m "0600" /dev/stdin $ctx.join.token_file]) --stdin $f.token --stdin-desc $"\(the agent token from ($ctx.join.token_src)\)" })
    (ext-step (priv $ctx [install -m "0644" /dev/stdin /etc/rancher/k3s/config.yaml]) --stdin $f.config --stdin-desc $"\(rendered k3s config: kubelet reservations for this box, node-ip ($f.node.ip) on ($f.node.iface)\)")
    (ext-step (priv $ctx [install -m "0600" /dev/stdin /etc/rancher/k3s/registries.yaml]) --stdin $f.registries --stdin-desc $"\(rendered registries.yaml: ($ctx.s.git_host) over HTTP\)")
    (ext-step (priv $ctx [install -m "0644" /dev/stdin /etc/hosts]) --stdin $f.hosts --stdin-desc $"\(/etc/hosts + '127.0.0.1 ($ctx.s.git_host) ($ctx.s.ci_host) # raibid-ci'\)")
    (ext-step (priv $ctx [install -d -o "1000" -g "1000" -m "0755" $ctx.s.cache_path]))
    (ext-step (priv $ctx [install -d -o "1000" -g "1000" -m "0755" $ctx.s.image_cache_path]))
  ]
  | append ($f.ufw_missing | each {|r| ext-step (priv $ctx ([ufw allow] | append $r)) })
  | append (if $f.buildah_userns { [] } else {[
    (ext-step (priv $ctx [install -D -m "0644" /dev/stdin $BUILDAH_HOST_PROFILE]) --stdin $BUILDAH_HOST_PROFILE_TEXT --stdin-desc "(AppArmor: /usr/bin/buildah flags=(unconfined) { userns, })")
    (ext-step (priv $ctx [apparmor_parser -r -W $BUILDAH_HOST_PROFILE]))
  ]})
  | append (if $f.traefik == null { [] } else {[
    (ext-step (priv $ctx [install -D -m "0644" /dev/stdin $TRAEFIK_CONFIG]) --stdin $f.traefik --stdin-desc "(HelmChartConfig traefik: read/write timeouts 1800 s for large image pushes)")
  ]})
  | append ($f.profiles | each {|p|
    ext-step (priv $ctx [install -D -m "0644" /dev/stdin $p.node]) --stdin $p.want --stdin-desc $"\(($p.src): ($p.what)\)"
  })
  | append [
    (ext-step (priv $ctx [apparmor_parser -r -W ($NODE_PROFILES | where node =~ apparmor | first | get node)]))
  ] | append (if $reinstall {[
    (ext-step [mkdir -p $ctx.tmp])
    (ext-step [curl -sfL -o $installer $"https://raw.githubusercontent.com/k3s-io/k3s/($tag)/install.sh"])
    # install.sh: INSTALL_K3S_EXEC=agent makes an agent (service k3s-agent); server URL and token come from the
    # config file rendered above (server:, token-file:), never from the command line.
    (ext-step (priv $ctx ([env $"INSTALL_K3S_VERSION=($pin)"] | append (if $joining { ["INSTALL_K3S_EXEC=agent"] } else { [] }) | append [sh $installer])))
  ]} else {[
    (ext-step (priv $ctx [systemctl restart $unit]))
  ]}) | compact | append (if $joining { [] } else {[
    (nu-step "wait for /etc/rancher/k3s/k3s.yaml (deadline 2 min)" {||
      wait-until "k3s kubeconfig /etc/rancher/k3s/k3s.yaml" {|| {ok: ("/etc/rancher/k3s/k3s.yaml" | path exists), detail: "not written yet"} } --timeout 2min --inspect ["sudo systemctl status k3s" "sudo journalctl -u k3s -n 100"]
      | ignore
    })
    (ext-step [mkdir -p ($ctx.kubeconfig | path dirname)])
    (ext-step (priv $ctx [install -m "0600" -o $"($ctx.facts.uid)" -g $gid /etc/rancher/k3s/k3s.yaml $ctx.kubeconfig]))
  ]})
}

# --- node ------------------------------------------------------------------------------------------------

def nodes-ready []: nothing -> record {
  let nodes = (kget [get nodes])
  if $nodes == null { return {ok: false, detail: "the API server does not answer", inspect: ["sudo systemctl status k3s" "sudo journalctl -u k3s -n 100"]} }
  if ($nodes.items | is-empty) { return {ok: false, detail: "no node registered yet", inspect: ["kubectl get nodes" "sudo journalctl -u k3s -n 100"]} }
  let bad = ($nodes.items | where {|n| not (ready-condition $n).ok })
  if ($bad | is-empty) { return {ok: true, detail: ($nodes.items | get metadata.name | str join ", ")} }
  {ok: false, detail: $"not Ready: ($bad | get metadata.name | str join ', ')",
    inspect: ($bad | each {|n| $"kubectl describe node ($n.metadata.name)" } | append "sudo journalctl -u k3s -n 100")}
}

def node-probe [ctx: record]: nothing -> record {
  let r = (nodes-ready)
  if $r.ok { ok $"node Ready: ($r.detail)" } else { todo $r.detail }
}

def node-steps [ctx: record]: nothing -> list<record> {
  [(nu-step "wait until every node is Ready (deadline 5 min)" {||
    wait-until "the k3s node" {|| nodes-ready } --timeout 5min | ignore
  })]
}

# --- flux ------------------------------------------------------------------------------------------------

def components-path [ctx: record]: nothing -> string { $"clusters/($CLUSTER)/flux-system/gotk-components.yaml" }

def flux-controllers [pin: string]: nothing -> record {
  let d = (kget [-n $NAMESPACES.flux get deployments])
  if $d == null or ($d.items | is-empty) { return {ok: false, detail: "no Flux controllers in flux-system", inspect: ["kubectl -n flux-system get deployments,pods" "flux check"]} }
  let bad = ($d.items | where {|x|
    ($x.metadata.labels?."app.kubernetes.io/version"? != $"v($pin)") or (($x.status?.availableReplicas? | default 0) < ($x.spec.replicas? | default 1))
  })
  if ($bad | is-empty) { {ok: true, detail: ($d.items | get metadata.name | str join ", ")} } else {
    {ok: false, detail: $"not available at v($pin): ($bad | get metadata.name | str join ', ')",
      inspect: ($bad | each {|x| $"kubectl -n flux-system describe deployment ($x.metadata.name)" } | append "flux check")}
  }
}

def flux-probe [ctx: record]: nothing -> record {
  let pin = $ctx.s.pins.FLUX_VERSION
  let comp = (system read (repo-path $ctx (components-path $ctx)) | default "")
  if not ($comp | str lowercase | str contains $"flux version: v($pin)") {
    return (todo $"(components-path $ctx) is not generated for Flux v($pin)")
  }
  let c = (flux-controllers $pin)
  if $c.ok { ok $"Flux v($pin) controllers available" } else { todo $c.detail }
}

def flux-steps [ctx: record]: nothing -> list<record> {
  let pin = $ctx.s.pins.FLUX_VERSION
  let comp = (components-path $ctx)
  [
    (ext-step [flux install $"--version=v($pin)" --export] --save-to (repo-path $ctx $comp))
    (ext-step [kubectl apply --server-side --force-conflicts -f (repo-path $ctx $comp)])
    (nu-step "wait until the Flux controllers are available (deadline 5 min)" {||
      wait-until "the Flux controllers" {|| flux-controllers $pin } --timeout 5min | ignore
    })
    (commit-step $ctx [$comp] $"bootstrap: Flux v($pin) components")
  ]
}

# --- age key ---------------------------------------------------------------------------------------------

def age-public [keyfile: string]: nothing -> any {
  let r = (system run-cmd [age-keygen -y $keyfile])
  if $r.exit_code == 0 { $r.stdout | str trim } else { null }
}

def sops-owner-key [text: string]: nothing -> any {
  $text | lines | where {|l| $l !~ '^\s*#' } | each {|l| $l | parse --regex '&owner\s+(?<k>\S+)' | get -o 0.k } | compact | get -o 0
}

# The kind of an age public key: age ≥ 1.4 makes post-quantum keys (`age1pq1…`) by default, older ages X25519
# (`age1…`).
@example "post-quantum" { age-key-kind "age1pq1abc" } --result "post-quantum"
export def age-key-kind [pub: string]: nothing -> string {
  if ($pub | str starts-with "age1pq1") { "post-quantum" } else if ($pub | str starts-with "age1") { "x25519" } else { "unknown" }
}

# Why the pinned sops and Flux cannot read a key of this kind (empty when they can): post-quantum keys need sops
# ≥ 3.12.0 and Flux ≥ 2.9.0 (kustomize-controller's SOPS decryption).
export def age-kind-problems [kind: string, pins: record]: nothing -> list<string> {
  if $kind == "x25519" { return [] }
  if $kind != "post-quantum" { return [$"an age key of unknown kind"] }
  [
    (if (version-at-least ($pins.SOPS_VERSION? | default "0.0.0") "3.12.0") { null } else { $"sops ($pins.SOPS_VERSION?) reads post-quantum age keys only from 3.12.0" })
    (if (version-at-least ($pins.FLUX_VERSION? | default "0.0.0") "2.9.0") { null } else { $"Flux ($pins.FLUX_VERSION?) decrypts post-quantum age keys only from 2.9.0" })
  ] | compact
}

# Refuse an owner key the pinned sops and Flux cannot use, saying what to do.
def check-age-kind [ctx: record, pub: string]: nothing -> nothing {
  let problems = (age-kind-problems (age-key-kind $pub) $ctx.s.pins)
  if ($problems | is-not-empty) {
    fail age_key_unreadable $"($ctx.keyfile) holds a (age-key-kind $pub) key that the pinned tools cannot read: ($problems | str join '; ')" --hint $"either pin sops >= 3.12.0 and Flux >= 2.9.0 in scripts/pins.env \(docs/pins.md\), or replace the key by an X25519 one made with an age < 1.4 \(`age-keygen -o ($ctx.keyfile)`\) before any secret is encrypted to it"
  }
}

def age-probe [ctx: record]: nothing -> record {
  if not (system exists $ctx.keyfile) { return (todo $"no age key at ($ctx.keyfile)") }
  let pub = (age-public $ctx.keyfile)
  if $pub == null { return (todo $"($ctx.keyfile) is not an age key") }
  check-age-kind $ctx $pub
  let owner = (sops-owner-key (system read (repo-path $ctx ".sops.yaml") | default ""))
  if $owner == $SOPS_PLACEHOLDER { return (todo ".sops.yaml still names the placeholder recipient") }
  if $owner != $pub { return (todo $".sops.yaml names another age key \(($owner)\); --force makes this key the owner") }
  if (kget [-n $NAMESPACES.flux get secret $CLUSTER_SECRETS.sops_age.name]) == null { return (todo "no sops-age Secret in flux-system") }
  ok $"age key ($ctx.keyfile) is the .sops.yaml owner and in the sops-age Secret"
}

def age-steps [ctx: record]: nothing -> list<record> {
  let key = $ctx.keyfile
  let have_key = (system exists $key)
  let backup = if $have_key {[
    (nu-step $"mv ($key) ($key).bak-<timestamp>  # --force: the old key is kept, never deleted" {||
      if ($key | path exists) { mv $key $"($key).bak-(date now | format date '%Y%m%d%H%M%S')" }
    })
  ]} else { [] }
  let gen = if $have_key and not $ctx.force { [] } else {
    $backup | append [
      (ext-step [mkdir -p ($key | path dirname)])
      (ext-step [age-keygen -o $key])
      (ext-step [chmod "0600" $key])
    ]
  }
  $gen | append [
    (nu-step $".sops.yaml: replace the recipient on the &owner line with the public key of ($key) \(refused when the pinned sops/Flux cannot read its kind\)" {||
      let pub = (run-argv [age-keygen -y $key] | str trim)
      check-age-kind $ctx $pub
      let file = (repo-path $ctx ".sops.yaml")
      let text = (open --raw $file)
      let current = (sops-owner-key $text)
      if $current != $SOPS_PLACEHOLDER and $current != $pub and not $ctx.force {
        fail sops_owner_differs $".sops.yaml names another age key \(($current)\)" --hint "keep that key (put it in ~/.config/sops/age/keys.txt), or re-run with --only age-key --force and re-encrypt the secrets (`sops updatekeys`)"
      }
      $text | str replace $"&owner ($current)" $"&owner ($pub)" | save --force $file
    })
    (commit-step $ctx [".sops.yaml"] "bootstrap: the owner's age key is the SOPS recipient")
    (pipe-step [[kubectl create namespace $NAMESPACES.flux --dry-run=client -o yaml] [kubectl apply --server-side -f -]])
    (pipe-step [[kubectl -n $NAMESPACES.flux create secret generic $CLUSTER_SECRETS.sops_age.name $"--from-file=($CLUSTER_SECRETS.sops_age.key)=($key)" --dry-run=client -o yaml] [kubectl apply --server-side -f -]])
    (nu-step $"tell the owner: back up ($key)" {||
      log warn $"BACK UP ($key) \(password manager or offline\): it is the only key that decrypts this repository's secrets"
    })
  ]
}

# --- secrets ---------------------------------------------------------------------------------------------

def secret-files [prefix: string]: nothing -> table { $SECRET_FILES | where {|f| $f.path | str starts-with $prefix } }

# The values in an encrypted file (null when it is missing or cannot be decrypted with the owner's key).
def decrypt [ctx: record, rel: string]: nothing -> any {
  let r = (system run-cmd [sops --decrypt (repo-path $ctx $rel)])
  if $r.exit_code != 0 { return null }
  try { $r.stdout | from yaml | get stringData } catch { null }
}

def listed-in-kustomization [ctx: record, rel: string]: nothing -> bool {
  let dir = ($rel | path dirname)
  let k = (system read (repo-path $ctx ($dir | path join kustomization.yaml)) | default "")
  let res = (try { $k | from yaml | get -o resources | default [] } catch { [] })
  ($rel | path basename) in $res
}

def secrets-state [ctx: record, files: table, copies: list<string>]: nothing -> record {
  for f in $files {
    if (decrypt $ctx $f.path) == null { return (todo $"($f.path) is missing or not decryptable with the owner's key") }
    if not (listed-in-kustomization $ctx $f.path) { return (todo $"($f.path) is not listed in its kustomization.yaml") }
  }
  for c in $copies {
    if not (system exists (config-copy $ctx $c)) { return (todo $"no copy of ($c) in ($ctx.config_dir)") }
  }
  ok $"($files | length) encrypted Secrets present and decryptable; owner's copies in ($ctx.config_dir)"
}

const LOCAL_SECRETS = [RAIBID_API_TOKEN RAIBID_GITEA_WEBHOOK_SECRET RAIBID_GITHUB_WEBHOOK_SECRET RAIBID_NOTIFY_SECRET GITEA_ADMIN_PASSWORD]

def secrets-probe [ctx: record]: nothing -> record {
  secrets-state $ctx (secret-files "infrastructure/") $LOCAL_SECRETS
}

# Write one Secret, SOPS-encrypted, to its path (the plain manifest only ever lives in a temporary file
# outside the repository), and list it in its directory's kustomization.yaml.
def encrypt-secret [ctx: record, f: record, values: record]: nothing -> nothing {
  let plain = (mktemp -t raibid-plain-XXXXXX.yaml)
  ^chmod 600 $plain
  {apiVersion: v1, kind: Secret, metadata: {name: $f.name, namespace: $f.namespace}, type: Opaque, stringData: $values}
  | to yaml | save --force $plain
  let out = try {
    cd $ctx.s.root
    run-argv [sops --encrypt --filename-override $f.path $plain] --code sops_failed --hint "is .sops.yaml's &owner your age public key? (stage age-key)"
  } catch {|e| rm -f $plain; return $e.raw }
  rm -f $plain
  $out | save --force (repo-path $ctx $f.path)
  let kfile = (repo-path $ctx ($f.path | path dirname | path join kustomization.yaml))
  let listed = (try { open --raw $kfile | from yaml | get -o resources | default [] } catch { [] })
  let files = ($listed | append ($f.path | path basename) | uniq)
  render-secrets-kustomization (open --raw $kfile) $files | save --force $kfile
}

def encrypt-show [f: record]: nothing -> string {
  $"sops --encrypt --filename-override ($f.path) <plain Secret ($f.namespace)/($f.name), keys ($f.keys | str join ',')> > ($f.path)  # + listed in ($f.path | path dirname)/kustomization.yaml"
}

def secrets-steps [ctx: record]: nothing -> list<record> {
  let files = (secret-files "infrastructure/")
  let force = $ctx.force
  [(nu-step $"generate \(or keep\) the owner's secrets in ($ctx.config_dir) \(mode 0600\): ($LOCAL_SECRETS | each {|n| config-file-name $n } | str join ', ')" {||
    for n in $LOCAL_SECRETS {
      let value = if $n == "GITEA_ADMIN_PASSWORD" {
        # Reuse the password of an existing gitea-admin Secret, so the running Gitea keeps matching.
        let existing = (decrypt $ctx ($files | where name == gitea-admin | first | get path))
        if $existing != null and not $force { $existing.password } else { random chars --length 32 }
      } else { random-hex }
      write-config-secret $n $value --force=$force | ignore
    }
  })]
  | append ($files | each {|f|
    nu-step (encrypt-show $f) {||
      let existing = if $force { null } else { decrypt $ctx $f.path }
      if $existing != null { log info $"($f.path): kept \(decryptable\)"; return }
      let values = if $f.name == "gitea-admin" {
        {username: $GITEA_ADMIN, password: (open --raw (config-copy $ctx GITEA_ADMIN_PASSWORD) | str trim)}
      } else {
        # Both redis-auth Secrets hold the same password (docs/secrets.md): reuse the other one's.
        let other = ($files | where name == redis-auth and path != $f.path | each {|o| decrypt $ctx $o.path } | compact)
        {password: ($other | get -o 0.password | default (random-hex))}
      }
      encrypt-secret $ctx $f $values
      log ok $"($f.path) written"
    }
  })
  | append (commit-step $ctx ($files | each {|f| [$f.path ($f.path | path dirname | path join kustomization.yaml)] } | flatten | uniq) "bootstrap: encrypted infrastructure secrets")
}

# --- gitea -----------------------------------------------------------------------------------------------

def helmrelease-ready [ns: string, name: string]: nothing -> record {
  let hr = (kget [-n $ns get helmrelease $name])
  let inspect = [$"flux -n ($ns) get helmrelease ($name)" $"kubectl -n ($ns) describe helmrelease ($name)" $"kubectl -n ($ns) get pods" $"flux logs --kind=HelmRelease --name=($name) --namespace=($ns)"]
  if $hr == null { return {ok: false, detail: $"HelmRelease ($ns)/($name) does not exist", inspect: $inspect} }
  (ready-condition $hr) | insert inspect $inspect
}

def gitea-api-ready [ctx: record]: nothing -> record {
  let r = (system http-probe GET $"($ctx.s.gitea_url)/api/v1/version")
  {ok: ($r.status == 200), detail: (if $r.status == null { $"($ctx.s.gitea_url) does not answer" } else { $"HTTP ($r.status)" }),
    inspect: [$"curl -sv ($ctx.s.gitea_url)/api/v1/version" $"getent hosts ($ctx.s.git_host)" "kubectl -n gitea get ingress,svc,pods"]}
}

def gitea-probe [ctx: record]: nothing -> record {
  let hr = (helmrelease-ready $NAMESPACES.gitea gitea)
  if not $hr.ok { return (todo $"HelmRelease gitea/gitea: ($hr.detail)") }
  let api = (gitea-api-ready $ctx)
  if not $api.ok { return (todo $"Gitea API: ($api.detail)") }
  ok $"Gitea ready at ($ctx.s.gitea_url)"
}

# infrastructure/controllers rendered as Flux will build it, minus its (SOPS-encrypted) Secrets, which the
# gitea stage creates from the decrypted files instead. `${VAR}`s are left for `flux envsubst --strict`.
export def controllers-manifests [root: string]: nothing -> string {
  let rendered = (run-argv [kubectl kustomize --load-restrictor=LoadRestrictionsNone ($root | path join infrastructure controllers)] --code kustomize_failed --hint "validate the tree first: ./scripts/dev.sh test --only gitops")
  $rendered | split row --regex '(?m)^---\s*$'
  | where {|d| ($d | str trim | is-not-empty) and (($d | from yaml).kind? != "Secret") }
  | str join "---\n"
}

# The CustomResourceDefinitions each stage installs and the ones the manifests it applies use (issue 21 §2:
# every custom resource, and KEDA's operator, after its CRDs). Flux's come with `flux install` (stage flux);
# KEDA's from the keda-crds source at its tag, applied by stage gitea before the controllers (KEDA's operator
# exits without them, kedacore/keda#824, and its HelmRelease would end Stalled).
export def stage-crds []: nothing -> table {
  [
    [stage provides];
    [flux [source.toolkit.fluxcd.io kustomize.toolkit.fluxcd.io helm.toolkit.fluxcd.io notification.toolkit.fluxcd.io]]
    [gitea [keda.sh]]
  ]
}

# The API groups a rendered manifest set needs CRDs for: custom resources by group, plus a chart that expects
# its CRDs from elsewhere (KEDA with crds.install false needs keda.sh before its operator starts).
export def crds-needed [docs: list<any>]: nothing -> list<string> {
  let builtin = ['' apps batch policy networking.k8s.io rbac.authorization.k8s.io storage.k8s.io autoscaling
    coordination.k8s.io discovery.k8s.io scheduling.k8s.io node.k8s.io apiextensions.k8s.io admissionregistration.k8s.io]
  let groups = ($docs | each {|d| $d.apiVersion? | default "" | if ($in | str contains "/") { split row "/" | first } else { "" } })
  let charts = ($docs | where {|d| $d.kind? == HelmRelease and $d.spec?.values?.crds?.install? == false }
    | each {|d| if $d.spec.chart.spec.chart == keda { "keda.sh" } else { null } } | compact)
  $groups | append $charts | where {|g| $g not-in $builtin } | uniq | sort
}

# The KEDA CRD source of the tree (GitRepository keda-crds): url and tag.
export def keda-crds-source [root: string]: nothing -> record {
  let g = (open --raw ($root | path join clusters $CLUSTER infrastructure.yaml) | from yaml
    | if ($in | describe) =~ '^(list|table)' { $in } else { [$in] } | where kind == GitRepository and metadata.name == keda-crds | first)
  {url: $g.spec.url, tag: $g.spec.ref.tag}
}

def gitea-steps [ctx: record]: nothing -> list<record> {
  let root = $ctx.s.root
  let vars = $ctx.s.vars
  let keda = (keda-crds-source $root)
  let kpath = ($keda.url | str replace --regex '^https://' '' | str replace --regex '\.git$' '')
  [
    (ext-step [kubectl apply --server-side --field-manager=kustomize-controller -k $"https://($kpath)//config/crd?ref=($keda.tag)"])
    (ext-step [kubectl wait --for=condition=Established --timeout=120s crd/scaledjobs.keda.sh crd/scaledobjects.keda.sh crd/triggerauthentications.keda.sh crd/clustertriggerauthentications.keda.sh])
    (nu-step "kubectl kustomize --load-restrictor=LoadRestrictionsNone infrastructure/controllers | (drop the encrypted Secrets) | flux envsubst --strict | kubectl apply --server-side --field-manager=kustomize-controller -f -" {||
      let kept = (controllers-manifests $root)
      let substituted = (with-env $vars { run-argv [flux envsubst --strict] --stdin $kept --hint "a ${VAR} in the manifests is not in clusters/dgx-spark/cluster-settings.yaml" })
      run-argv [kubectl apply --server-side --field-manager=kustomize-controller -f -] --stdin $substituted | ignore
    })
  ]
  | append (secret-files "infrastructure/" | each {|f|
    pipe-step [[sops --decrypt $f.path] [kubectl apply --server-side --field-manager=kustomize-controller -f -]] --cwd $root
  })
  | append [
    (nu-step "wait until HelmRelease gitea/gitea is Ready (deadline 10 min)" {||
      wait-until "HelmRelease gitea/gitea" {|| helmrelease-ready $NAMESPACES.gitea gitea } --timeout 10min | ignore
    })
    (nu-step $"wait until ($ctx.s.gitea_url)/api/v1/version answers \(deadline 3 min\)" {||
      wait-until $"Gitea at ($ctx.s.gitea_url)" {|| gitea-api-ready $ctx } --timeout 3min | ignore
    })
  ]
}

# --- tokens ----------------------------------------------------------------------------------------------

def tokens-probe [ctx: record]: nothing -> record {
  let st = (secrets-state $ctx (secret-files "apps/") [RAIBID_GITEA_TOKEN])
  if not $st.done { return $st }
  let tok = (system read (config-copy $ctx RAIBID_GITEA_TOKEN) | default "" | str trim)
  let me = (system http-probe GET $"($ctx.s.gitea_url)/api/v1/user" --headers {Authorization: $"token ($tok)"})
  if $me.status != 200 { return (todo $"the owner's Gitea token does not work \(HTTP ($me.status)\)") }
  if (kget [-n $NAMESPACES.flux get secret $CLUSTER_SECRETS.flux_git.name]) == null { return (todo "no flux-system Secret (Flux's Gitea credentials)") }
  if (registries-auth (read-root $ctx /etc/rancher/k3s/registries.yaml) $ctx.s.git_host) == null { return (todo "registries.yaml has no credentials for Gitea's registry") }
  let push = (push-user-problems $ctx)
  if ($push | is-not-empty) { return (todo ($push | str join "; ")) }
  if (existing-tokens $ctx).raibid-image-push == null { return (todo $"the image push token is not ($PUSH_USER)'s raibid-image-push") }
  ok $"Gitea tokens in place \(owner, dispatcher, agent, Flux, registry; image pushes as ($PUSH_USER)\)"
}

# The organisations the push user must stay out of: raibid's own images' (and the ops repository's) owners.
export def reserved-orgs [ctx: record]: nothing -> list<string> {
  ["raibid" $ctx.s.ops.owner] | append ($ctx.s.images | each {|i| (image-parts $i.ref).owner }) | uniq
}

def admin-probe-headers [ctx: record, --sudo: string = ""]: nothing -> record {
  let b = (admin-basic-or-null $ctx)
  if $b == null { return {} }
  basic-header $b | if ($sudo | is-empty) { $in } else { insert Sudo $sudo }
}

# What is not as ADR 0012 wants about the image push user (read-only, for the probe): it exists, is no site
# admin, is in no reserved organisation and in the packages team of every RAIBID_IMAGE_PUBLISH_ORGS organisation.
export def push-user-problems [ctx: record]: nothing -> list<string> {
  let api = $"($ctx.s.gitea_url)/api/v1"
  let h = (admin-probe-headers $ctx)
  let u = (system http-probe GET $"($api)/users/($PUSH_USER)" --headers $h)
  if $u.status != 200 { return [$"no Gitea user ($PUSH_USER) \(image pushes, ADR 0012\)"] }
  mut out = []
  if ($u.body.is_admin? | default false) { $out = ($out | append $"($PUSH_USER) is a site admin") }
  for o in (reserved-orgs $ctx) {
    if (system http-probe GET $"($api)/orgs/($o)/members/($PUSH_USER)" --headers $h).status == 204 {
      $out = ($out | append $"($PUSH_USER) is a member of ($o)")
    }
  }
  for o in $ctx.s.publish_orgs {
    let teams = (system http-probe GET $"($api)/orgs/($o)/teams" --headers $h)
    let team = if $teams.status == 200 { $teams.body | where name == $PACKAGES_TEAM | get -o 0 } else { null }
    if $team == null or not (gitea team-is-packages-only $team) {
      $out = ($out | append $"no team ($o)/($PACKAGES_TEAM) with package write only")
      continue
    }
    if (system http-probe GET $"($api)/teams/($team.id)/members/($PUSH_USER)" --headers $h).status != 200 {
      $out = ($out | append $"($PUSH_USER) is not in ($o)/($PACKAGES_TEAM)")
    }
  }
  $out
}

# Is `value` the push user's token `raibid-image-push`? Gitea shows a token's last eight characters only: the
# one in the Secret must end like it (an older bootstrap made it for the admin, ADR 0012).
export def push-token-verified [ctx: record, value: any]: nothing -> any {
  if $value == null { return null }
  let r = (system http-probe GET $"($ctx.s.gitea_url)/api/v1/users/($PUSH_USER)/tokens" --headers (admin-probe-headers $ctx --sudo $PUSH_USER))
  if $r.status != 200 { return null }
  let t = ($r.body | where name == raibid-image-push | get -o 0)
  let n = ($value | str length)
  let last8 = if $n > 8 { $value | str substring ($n - 8).. } else { $value }
  if $t == null or ($t.token_last_eight? | default "") != $last8 { return null }
  $value
}

# Where bootstrap keeps sensitive files while a stage runs (tokens between steps): mode 0700, removed after every
# stage, whether it finished or failed halfway (run-steps), so no plaintext token outlives its stage.
export def secret-tmp [ctx: record]: nothing -> string { $ctx.tmp | path join secret }

# Run a stage's steps in order; whatever happens, remove the stage's sensitive temp files afterwards.
export def run-steps [ctx: record, steps: list<record>]: nothing -> nothing {
  let dir = (secret-tmp $ctx)
  try {
    for step in $steps {
      log info $"$ ($step.show)"
      do $step.run
    }
  } catch {|e|
    rm -rf $dir
    return $e.raw
  }
  rm -rf $dir
}

def some-or-null [v: any, key: string]: nothing -> any { if $v == null { null } else { $v | get -o $key } }

# The value each bootstrap token has where it is used today, or null: what a re-run keeps (issue 21 §2: tokens
# rotate only with --rotate).
export def existing-tokens [ctx: record]: nothing -> record {
  let app = (secret-files "apps/")
  let dec = {|name| let f = ($app | where name == $name); if ($f | is-empty) { null } else { decrypt $ctx $f.0.path } }
  let flux = (kget [-n $NAMESPACES.flux get secret $CLUSTER_SECRETS.flux_git.name])
  let flux_pw = (some-or-null (some-or-null $flux data) password)
  {
    raibid-owner: (system read (config-copy $ctx RAIBID_GITEA_TOKEN) | if $in == null { null } else { str trim })
    raibid-dispatcher: (some-or-null (do $dec raibid-dispatcher) RAIBID_GITEA_TOKEN)
    raibid-agent: (some-or-null (do $dec raibid-agent) RAIBID_GIT_TOKEN)
    raibid-flux: (if $flux_pw == null { null } else { $flux_pw | decode base64 | decode })
    raibid-registry: (some-or-null (registries-auth (read-root $ctx /etc/rancher/k3s/registries.yaml) $ctx.s.git_host) password)
    raibid-image-push: (push-token-verified $ctx (some-or-null (do $dec raibid-registry-push) password))
  }
}

# The GitHub token for commit statuses on mirrored repositories (issue 22), when the owner gives one:
# RAIBID_GITHUB_TOKEN, its _FILE twin, or `github-token` in the config directory. Never generated: a
# fine-grained token with only "Commit statuses: write" that the owner makes on GitHub (docs/operations.md).
def github-token-given [ctx: record]: nothing -> any {
  with-env {RAIBID_CONFIG_DIR: $ctx.config_dir} { secret-or-null RAIBID_GITHUB_TOKEN }
}

# The raibid-dispatcher Secret's values: the generated ones, plus RAIBID_GITHUB_TOKEN when one is given now, else
# the one the Secret already holds (a re-run without it keeps it); without either the key is absent (the
# Deployment reads it with `optional: true`: statuses go to Gitea only).
export def dispatcher-secret-values [base: record, given: any, existing: any]: nothing -> record {
  let kept = if $existing == null { null } else { $existing | get -o RAIBID_GITHUB_TOKEN }
  let gh = if ($given | is-not-empty) { $given } else { $kept }
  if ($gh | is-empty) { $base } else { $base | insert RAIBID_GITHUB_TOKEN $gh }
}

def tokens-steps [ctx: record]: nothing -> list<record> {
  let files = (secret-files "apps/")
  let api = $"($ctx.s.gitea_url)/api/v1"
  # Every token value (kept or new) lives in a 0600 file below secret-tmp while the stage runs; run-steps
  # removes it when the stage ends, also when it fails halfway.
  let store = ((secret-tmp $ctx) | path join tokens.json)
  let tok = {|name| open $store | get $name }
  let local = {|n| open --raw (config-copy $ctx $n) | str trim }
  let have = (existing-tokens $ctx)
  let make = if $ctx.rotate { $TOKENS } else { $TOKENS | where {|t| ($have | get $t.name) == null } }
  let what = if ($make | is-empty) { $"none: all ($TOKENS | length) tokens are in place \(--rotate replaces them\)" } else { $make | get name | str join ', ' }
  let orgs = $ctx.s.publish_orgs
  [
    (nu-step $"Gitea user ($PUSH_USER) \(POST ($api)/admin/users when missing: no site admin, a random password kept nowhere\), out of ((reserved-orgs $ctx) | str join ', '), in team ($PACKAGES_TEAM) \(package write only\) of: (if ($orgs | is-empty) { 'no organisation (RAIBID_IMAGE_PUBLISH_ORGS is empty)' } else { $orgs | str join ', ' })" {||
      let made = (with-env {RAIBID_GITEA_URL: $ctx.s.gitea_url} {
        gitea ensure-push-user $PUSH_USER $"($PUSH_USER)@noreply.($ctx.s.domain)" $orgs (reserved-orgs $ctx) $PACKAGES_TEAM (admin-basic $ctx)
      })
      for m in $made { log ok $"Gitea: ($m)" }
    })
    (nu-step $"POST ($api)/users/{owner}/tokens \(basic auth as ($GITEA_ADMIN); ($PUSH_USER)'s with `Sudo: ($PUSH_USER)`\) for: ($what); an existing token of the same name is replaced \(DELETE …/tokens/{name}\)" {||
      let basic = (admin-basic $ctx)
      let made = (with-env {RAIBID_GITEA_URL: $ctx.s.gitea_url} {
        let m = ($make | reduce --fold {} {|t, acc| $acc | insert $t.name (gitea create-token $t.owner $t.name $t.scopes $basic) })
        # An older bootstrap made the push token for the admin (a token that could push anywhere): remove it.
        if (gitea delete-token $GITEA_ADMIN raibid-image-push $basic) { log ok $"removed ($GITEA_ADMIN)'s old raibid-image-push token" }
        $m
      })
      mkdir (secret-tmp $ctx)
      ^chmod 700 (secret-tmp $ctx)
      "" | save --force $store
      ^chmod 600 $store
      $have | merge $made | to json | save --force $store
      if "raibid-owner" in $made { write-config-secret RAIBID_GITEA_TOKEN $made.raibid-owner --force | ignore }
    })
  ]
  | append ($files | each {|f|
    nu-step $"(encrypt-show $f)  # only when its values change" {||
      let values = if $f.name == "raibid-dispatcher" {
        dispatcher-secret-values {
          RAIBID_API_TOKEN: (do $local RAIBID_API_TOKEN), RAIBID_GITEA_WEBHOOK_SECRET: (do $local RAIBID_GITEA_WEBHOOK_SECRET)
          RAIBID_GITHUB_WEBHOOK_SECRET: (do $local RAIBID_GITHUB_WEBHOOK_SECRET), RAIBID_GITEA_TOKEN: (do $tok raibid-dispatcher)
          RAIBID_NOTIFY_SECRET: (do $local RAIBID_NOTIFY_SECRET)
          # Artifact downloads and deletions (ADR 0018): the push user's token, as the agents have it.
          RAIBID_REGISTRY_PASSWORD: (do $tok raibid-image-push)
        } (github-token-given $ctx) (decrypt $ctx $f.path)
      } else if $f.name == "raibid-registry-push" {
        {password: (do $tok raibid-image-push)}
      } else {
        {RAIBID_GIT_TOKEN: (do $tok raibid-agent)}
      }
      if (decrypt $ctx $f.path) == $values and (listed-in-kustomization $ctx $f.path) { log info $"($f.path): unchanged"; return }
      encrypt-secret $ctx $f $values
    }
  })
  | append [
    (ext-step [kubectl apply --server-side -f -] --stdin-desc "(Secret flux-system/flux-system: username, password = the raibid-flux token)" --stdin-from {||
      {apiVersion: v1, kind: Secret, type: Opaque
        metadata: {name: $CLUSTER_SECRETS.flux_git.name, namespace: $CLUSTER_SECRETS.flux_git.namespace}
        stringData: {username: $GITEA_ADMIN, password: (do $tok raibid-flux)}} | to yaml
    })
    (nu-step $"(show-argv (priv $ctx [install -m '0600' /dev/stdin /etc/rancher/k3s/registries.yaml])) <<< \(registries.yaml with the raibid-registry token\), then (show-argv (priv $ctx [systemctl restart k3s])) and wait for the nodes: only when it changes" {||
      let want = (render-registries $ctx.s.git_host {username: $GITEA_ADMIN, password: (do $tok raibid-registry)})
      if (read-root $ctx /etc/rancher/k3s/registries.yaml) == $want { log info "registries.yaml: unchanged"; return }
      run-argv (priv $ctx [install -m "0600" /dev/stdin /etc/rancher/k3s/registries.yaml]) --stdin $want | ignore
      run-argv (priv $ctx [systemctl restart k3s]) | ignore
      wait-until "the k3s node after the restart" {|| nodes-ready } --timeout 5min | ignore
    })
    (nu-step $"rm -r (secret-tmp $ctx)" {|| rm -rf (secret-tmp $ctx) })
    (commit-step $ctx ($files | each {|f| [$f.path ($f.path | path dirname | path join kustomization.yaml)] } | flatten | uniq) "bootstrap: encrypted app secrets")
  ]
  | append (if ($make | is-empty) { [] } else {[
    (nu-step $"note: ($what) were \(re\)created; a dispatcher or agents already running read the new Secrets only after a restart" {||
      if (kget [-n $NAMESPACES.system get deployment $SERVICES.dispatcher.name]) != null {
        log warn "raibid already runs: after the next stages pushed the new Secrets, restart it: kubectl -n raibid-system rollout restart deployment/raibid-dispatcher; kubectl -n raibid-builds rollout restart deployment/raibid-agent-warm"
      }
    })
  ]})
}

# --- ops repository --------------------------------------------------------------------------------------

def ops-url [ctx: record]: nothing -> string { $"($ctx.s.gitea_url)/($ctx.s.ops.owner)/($ctx.s.ops.name).git" }

# git over HTTP with the admin's credentials from the environment (GIT_ASKPASS), never in argv or URLs.
def askpass-env [ctx: record]: nothing -> record {
  let script = ($ctx.tmp | path join askpass.sh)
  if not (system fake?) {
    mkdir $ctx.tmp
    "#!/bin/sh\ncase \"$1\" in Username*) printf '%s\\n' \"$RAIBID_ASKPASS_USER\" ;; *) printf '%s\\n' \"$RAIBID_ASKPASS_PASSWORD\" ;; esac\n" | save --force $script
    ^chmod 700 $script
  }
  let b = (admin-basic $ctx)
  {GIT_ASKPASS: $script, GIT_TERMINAL_PROMPT: "0", RAIBID_ASKPASS_USER: $b.username, RAIBID_ASKPASS_PASSWORD: $b.password}
}

def ops-probe [ctx: record]: nothing -> record {
  let b = (admin-basic-or-null $ctx)
  if $b == null { return (todo "the Gitea admin password does not exist yet (stage secrets)") }
  let o = $ctx.s.ops
  let api = $"($ctx.s.gitea_url)/api/v1/repos/($o.owner)/($o.name)"
  let repo = (system http-probe GET $api --headers (basic-header $b))
  if $repo.status != 200 { return (todo $"no repository ($o.owner)/($o.name) in Gitea") }
  let branch = (system http-probe GET $"($api)/branches/($o.branch)" --headers (basic-header $b))
  let remote = if $branch.status == 200 { $branch.body.commit.id } else { "" }
  let local = ((system run-cmd [git -C $ctx.s.root rev-parse HEAD]).stdout | str trim)
  if $remote != $local { return (todo $"the ops repository's ($o.branch) is not this checkout's HEAD \(($local | str substring 0..7)\)") }
  ok $"($o.owner)/($o.name) holds HEAD ($local | str substring 0..7)"
}

def ops-steps [ctx: record]: nothing -> list<record> {
  let o = $ctx.s.ops
  [
    (nu-step $"GET/POST ($ctx.s.gitea_url)/api/v1/orgs \(org ($o.owner), private\) and /api/v1/orgs/($o.owner)/repos \(repo ($o.name), private\) when missing" {||
      let made = (with-env {RAIBID_GITEA_URL: $ctx.s.gitea_url} { gitea ensure-repo $o.owner $o.name --basic (admin-basic $ctx) })
      for m in $made { log ok $"created ($m)" }
    })
    (nu-step $"git -C ($ctx.s.root) push (ops-url $ctx) HEAD:refs/heads/($o.branch)  # credentials through GIT_ASKPASS" {||
      let dirty = (run-argv [git -C $ctx.s.root status --porcelain --untracked-files=no] | str trim)
      if ($dirty | is-not-empty) { log warn "uncommitted changes are not pushed (commit them and re-run --only ops-repo)" }
      with-env (askpass-env $ctx) {
        run-argv [git -C $ctx.s.root push (ops-url $ctx) $"HEAD:refs/heads/($o.branch)"] --code git_push_failed --hint "the ops repository has commits this checkout lacks: pull them (git pull <ops url> main) and re-run" | ignore
      }
    })
  ]
}

# --- images ----------------------------------------------------------------------------------------------

def image-parts [ref: string]: nothing -> record {
  let p = ($ref | parse --regex '^(?<host>[^/]+)/(?<owner>[^/]+)/(?<name>[^:]+):(?<tag>.+)$' | first)
  $p
}

def images-probe [ctx: record]: nothing -> record {
  let b = (admin-basic-or-null $ctx)
  if $b == null { return (todo "the Gitea admin password does not exist yet (stage secrets)") }
  let missing = ($ctx.s.images | where {|i|
    let p = (image-parts $i.ref)
    (system http-probe GET $"($ctx.s.gitea_url)/api/v1/packages/($p.owner)/container/($p.name)/($p.tag)" --headers (basic-header $b)).status != 200
  })
  if ($missing | is-empty) { ok $"($ctx.s.images | get ref | str join ', ') in Gitea's registry" } else {
    todo $"not in Gitea's registry: ($missing | get ref | str join ', ')"
  }
}

def images-steps [ctx: record]: nothing -> list<record> {
  let rust = $ctx.s.pins.RUST_VERSION
  [(ext-step [buildah login --tls-verify=false --username $GITEA_ADMIN --password-stdin $ctx.s.git_host] --stdin-desc "(the Gitea admin password)" --stdin-from {|| (admin-basic $ctx).password })]
  | append ($ctx.s.images | each {|i| [
      (ext-step [buildah build --layers --build-arg $"RUST_VERSION=($rust)" -f $i.containerfile -t $i.ref .] --cwd $ctx.s.root)
      (ext-step [buildah push --tls-verify=false $i.ref])
    ] } | flatten)
}

# --- flux-sync -------------------------------------------------------------------------------------------

def gitrepo-ready [ctx: record]: nothing -> record {
  let g = (kget [-n $NAMESPACES.flux get gitrepository flux-system])
  let inspect = ["flux -n flux-system get sources git" "kubectl -n flux-system describe gitrepository flux-system" "flux logs --kind=GitRepository --name=flux-system --namespace=flux-system"]
  if $g == null { return {ok: false, detail: "GitRepository flux-system/flux-system does not exist", inspect: $inspect} }
  if $g.spec.url != $ctx.s.ops.cluster_url { return {ok: false, detail: $"it syncs from ($g.spec.url), not ($ctx.s.ops.cluster_url)", inspect: $inspect} }
  (ready-condition $g) | insert inspect $inspect | insert revision ($g.status?.artifact?.revision? | default "")
}

def sync-probe [ctx: record]: nothing -> record {
  let g = (gitrepo-ready $ctx)
  if $g.ok { ok $"Flux syncs from ($ctx.s.ops.cluster_url)" } else { todo $"GitRepository flux-system: ($g.detail)" }
}

def sync-steps [ctx: record]: nothing -> list<record> {
  [
    (ext-step [kubectl apply --server-side --field-manager=kustomize-controller -k $"clusters/($CLUSTER)/flux-system"] --cwd $ctx.s.root)
    (ext-step [flux reconcile source git flux-system -n $NAMESPACES.flux])
    (nu-step "wait until GitRepository flux-system/flux-system is Ready (deadline 3 min)" {||
      wait-until "GitRepository flux-system/flux-system" {|| gitrepo-ready $ctx } --timeout 3min | ignore
    })
  ]
}

# --- reconcile -------------------------------------------------------------------------------------------

def flux-objects-ready [ctx: record]: nothing -> record {
  let ks = (kget [get kustomizations.kustomize.toolkit.fluxcd.io -A])
  let hrs = (kget [get helmreleases.helm.toolkit.fluxcd.io -A])
  if $ks == null or $hrs == null { return {ok: false, detail: "the Flux CRDs do not answer", inspect: ["flux check"]} }
  let objs = ($ks.items | each {|o| {kind: Kustomization, o: $o} } | append ($hrs.items | each {|o| {kind: HelmRelease, o: $o} }))
  let bad = ($objs | where {|x| not (ready-condition $x.o).ok })
  let head = ((system run-cmd [git -C $ctx.s.root rev-parse HEAD]).stdout | str trim)
  let rev = ((gitrepo-ready $ctx).revision? | default "")
  if ($bad | is-empty) and ($rev | str contains $head) {
    return {ok: true, detail: $"($objs | length) Flux objects Ready at ($head | str substring 0..7)"}
  }
  if ($bad | is-empty) {
    return {ok: false, detail: $"Flux has applied ($rev), not HEAD ($head | str substring 0..7)", inspect: ["flux -n flux-system get sources git" "flux reconcile source git flux-system"]}
  }
  {
    ok: false
    detail: ($bad | each {|x| $"($x.kind) ($x.o.metadata.namespace)/($x.o.metadata.name): ((ready-condition $x.o).detail)" } | str join "; ")
    inspect: ($bad | each {|x|
      let n = $x.o.metadata.name
      let ns = $x.o.metadata.namespace
      if $x.kind == "Kustomization" {
        [$"flux -n ($ns) get kustomization ($n)" $"flux -n ($ns) events --for Kustomization/($n)"]
      } else {
        [$"flux -n ($ns) get helmrelease ($n)" $"kubectl -n ($ns) describe helmrelease ($n)" $"flux logs --kind=HelmRelease --name=($n) --namespace=($ns)"]
      }
    } | flatten)
  }
}

def reconcile-probe [ctx: record]: nothing -> record {
  let r = (flux-objects-ready $ctx)
  if $r.ok { ok $r.detail } else { todo $r.detail }
}

def reconcile-steps [ctx: record]: nothing -> list<record> {
  [
    (ext-step [flux reconcile kustomization flux-system -n $NAMESPACES.flux --with-source])
    (nu-step "wait until every Flux Kustomization and HelmRelease is Ready at HEAD (deadline 20 min)" {||
      wait-until "the Flux Kustomizations and HelmReleases" {|| flux-objects-ready $ctx } --timeout 20min --interval 10sec | ignore
    })
  ]
}

# --- the list --------------------------------------------------------------------------------------------

# `bootstrap.nu join`: what a second Spark needs from the first, checked before anything runs. The agent token
# (never the server token: that one would let the node act as a server and read every Secret), the server's URL,
# and node 1's registries.yaml (Gitea pull credentials).
export def join-spec [server_url: string, token_src: string, registries_src: string]: nothing -> record {
  if ($server_url !~ '^https://[^/]+:6443/?$') {
    fail bad_server_url $"--server ($server_url) is not the first Spark's API" --hint "e.g. --server https://192.168.1.20:6443 (the server's node-ip)"
  }
  for f in [$token_src $registries_src] {
    if not ($f | path exists) { fail missing_file $"($f) does not exist" --hint "copy it from the first Spark first (docs/operations.md, Add a Spark)" }
  }
  let token = (open --raw $token_src | str trim)
  # k3s tokens: K10<ca hash>::server:<secret> is the server token (/var/lib/rancher/k3s/server/token, node-token);
  # the agent token (/var/lib/rancher/k3s/server/agent-token) only joins agents.
  if ($token | str contains "::server:") {
    fail server_token $"($token_src) holds the SERVER token" --hint "use the agent token: on the first Spark `sudo cat /var/lib/rancher/k3s/server/agent-token`; a node joined with the server token can act as a server"
  }
  if ($token | is-empty) { fail empty_token $"($token_src) is empty" }
  {server_url: ($server_url | str trim --right --char "/"), token_src: $token_src, token_file: "/etc/rancher/k3s/agent-token", registries_src: $registries_src}
}

# Drain, then delete a node (kubectl drain: cordons it and evicts its pods, honouring their grace periods;
# DaemonSet pods stay; emptyDir data goes with the pods). Its caches stay on its disk.
export def remove-node-steps [node: string, timeout: duration]: nothing -> list<record> {
  let secs = ($timeout / 1sec | into int)
  [
    (ext-step [kubectl drain $node --ignore-daemonsets --delete-emptydir-data $"--timeout=($secs)s"])
    (ext-step [kubectl delete node $node --wait=true])
  ]
}

# The stages `join` runs on the new node: the same host preparation as node 1 (k3s as an agent, profiles,
# caches, registries, /etc/hosts, ufw), nothing cluster-wide.
export def join-stages []: nothing -> list<string> { [preflight k3s] }

# Every stage in order: name, what it does, probe, steps.
export def all-stages []: nothing -> table {
  [
    [name title probe steps];
    [preflight "host and tools" {|c| preflight-probe $c } {|c| preflight-steps $c }]
    [k3s "k3s, its config, registries, /etc/hosts, cache dir" {|c| k3s-probe $c } {|c| k3s-steps $c }]
    [node "wait for the node" {|c| node-probe $c } {|c| node-steps $c }]
    [flux "Flux controllers" {|c| flux-probe $c } {|c| flux-steps $c }]
    [age-key "age key, .sops.yaml, sops-age" {|c| age-probe $c } {|c| age-steps $c }]
    [secrets "generated infrastructure secrets" {|c| secrets-probe $c } {|c| secrets-steps $c }]
    [gitea "Gitea (and the other controllers) before Flux syncs" {|c| gitea-probe $c } {|c| gitea-steps $c }]
    [tokens "Gitea tokens, app secrets, Flux and registry credentials" {|c| tokens-probe $c } {|c| tokens-steps $c }]
    [ops-repo "ops repository in Gitea, pushed" {|c| ops-probe $c } {|c| ops-steps $c }]
    [images "dispatcher and agent images" {|c| images-probe $c } {|c| images-steps $c }]
    [flux-sync "Flux pointed at the ops repository" {|c| sync-probe $c } {|c| sync-steps $c }]
    [reconcile "every Kustomization and HelmRelease Ready" {|c| reconcile-probe $c } {|c| reconcile-steps $c }]
  ]
}

# The plan: for each selected stage, run or skip, why, and the exact commands.
export def plan [ctx: record, selected: list<string>]: nothing -> table {
  all-stages | where name in $selected | each {|st|
    let p = (try { do $st.probe $ctx } catch {|e| {done: false, failed: true, reason: $"probe failed: ($e.msg)"} })
    # A probe that fails (sudo refused, an unrecorded command) stops the real run at this stage: nothing to show.
    if ($p.failed? | default false) {
      return {stage: $st.name, action: "fail", reason: $p.reason, commands: []}
    }
    let action = if $p.done and not $ctx.force { "skip" } else { "run" }
    let reason = if $p.done and $ctx.force { $"--force \(($p.reason)\)" } else { $p.reason }
    let commands = if $action == "run" {
      try { do $st.steps $ctx | get show } catch {|e| [$"\(cannot compute the commands yet: ($e.msg)\)"] }
    } else { [] }
    {stage: $st.name, action: $action, reason: $reason, commands: $commands}
  }
}
