# raibid-ci local mode: the whole job flow on one machine (Redis, dispatcher, a warm agent pool as
# local processes), and the project's test command. Run through ./scripts/dev.sh, which installs the
# pinned Nushell first.

use lib/errors.nu [fail interrupted]
use lib/contract.nu [load-contract repo-root]
use lib/log.nu *

const STATE_DIR = ".state"

def root []: nothing -> path { repo-root }
# The stack's state (env.json, pids, logs, Redis data, workspaces): RAIBID_STATE_DIR when set (a test's
# stack of its own beside a developer's), else .state in the checkout.
def state []: nothing -> path {
  let d = ($env.RAIBID_STATE_DIR? | default "")
  if $d != "" { $d | path expand } else { root | path join $STATE_DIR }
}
def tools []: nothing -> path { root | path join .tools }

# Run an argv list (never a shell string); on failure raise `code` with the command's stderr.
def run-cmd [cmd: list<string>, --code: string = "command_failed", --hint: string = ""]: nothing -> string {
  let r = (do { ^($cmd | first) ...($cmd | skip 1) } | complete)
  if $r.exit_code != 0 {
    fail $code $"`($cmd | str join ' ')` exited with ($r.exit_code): ($r.stderr | str trim | lines | last 5 | str join (char nl))" --hint $hint
  }
  $r.stdout
}

# Install a Debian package when its command is missing (as root, or through sudo).
def ensure-apt [cmd: string, pkg: string] {
  if (which $cmd | is-not-empty) { return }
  info $"installing ($pkg) \(needed for `($cmd)`\)"
  let sudo = if ((^id -u | str trim) == "0") { [] } else if (which sudo | is-not-empty) { [sudo] } else {
    fail missing_tool $"`($cmd)` is missing and this user cannot install packages" --hint $"install the Debian package ($pkg) and run again"
  }
  let marker = ($env.TMPDIR? | default "/tmp" | path join "raibid-apt-updated")
  if not ($marker | path exists) {
    run-cmd [...$sudo apt-get update -qq] --code apt_failed --hint "check the package mirror configuration" | ignore
    touch $marker
  }
  with-env {DEBIAN_FRONTEND: noninteractive} {
    run-cmd [...$sudo apt-get install -y -qq --no-install-recommends $pkg] --code apt_failed --hint $"install ($pkg) by hand" | ignore
  }
  if (which $cmd | is-empty) { fail missing_tool $"($pkg) installed but `($cmd)` is still not on PATH" }
}

# The Python venv the GitOps checks run in (.tools/venv, requirements pinned in tests/gitops).
def ensure-venv []: nothing -> path {
  let venv = (tools | path join venv)
  let py = ($venv | path join bin python)
  let req = (root | path join tests gitops requirements.txt)
  let stamp = ($venv | path join .requirements.sha256)
  let want = (open --raw $req | hash sha256)
  if ($py | path exists) and ($stamp | path exists) and ((open --raw $stamp | str trim) == $want) { return $py }
  info "preparing the Python venv for the GitOps checks (.tools/venv)"
  run-cmd [python3 -m venv $venv] --code venv_failed --hint "install python3-venv" | ignore
  run-cmd [$py -m pip install -q --disable-pip-version-check -r $req] --code pip_failed --hint "check access to PyPI" | ignore
  $want | save -f $stamp
  $py
}

# The Python venv of the MCP suite (.tools/mcp-venv: the official MCP SDK, pinned in tests/mcp).
def ensure-mcp-venv []: nothing -> path {
  let venv = (tools | path join mcp-venv)
  let py = ($venv | path join bin python)
  let req = (root | path join tests mcp requirements.txt)
  let stamp = ($venv | path join .requirements.sha256)
  let want = (open --raw $req | hash sha256)
  if ($py | path exists) and ($stamp | path exists) and ((open --raw $stamp | str trim) == $want) { return $py }
  info "preparing the Python venv for the MCP suite (.tools/mcp-venv)"
  run-cmd [python3 -m venv $venv] --code venv_failed --hint "install python3-venv" | ignore
  run-cmd [$py -m pip install -q --disable-pip-version-check -r $req] --code pip_failed --hint "check access to PyPI" | ignore
  $want | save -f $stamp
  $py
}

def ensure-build [--release] {
  let flags = if $release { ["--release"] } else { [] }
  let profile = if $release { "release" } else { "debug" }
  let first = not ((target-dir | path join $profile raibid-dispatcher) | path exists)
  step $"building the Rust workspace \(cargo build ($flags | str join ' ')\)"
  let crates = (open --raw (root | path join rust Cargo.lock) | lines | where $it == "[[package]]" | length)
  if $first {
    let cores = (sys cpu | length)
    let minutes = ([2 (30 // $cores)] | math max)
    info $"first build: ($crates) crates from scratch, roughly ($minutes) minutes on ($cores) cores \(longer while the machine is busy\); later builds take seconds"
  }
  # cargo's own lines pass through; each `Compiling` line says how far the build is, so a long
  # stretch on one big crate still names it.
  let color = if (is-terminal --stderr) { [--color always] } else { [] }
  let code = try {
    do { cd (root | path join rust); ^cargo build --locked ...$color ...$flags --bins } e>| lines | each {|l|
      let m = ($l | ansi strip | parse --regex '^\s*Compiling (?<crate>\S+) (?<version>\S+)')
      if ($m | is-empty) { print -e $l } else { print -e $"(elapsed)    compiling ($m.0.crate) ($m.0.version) \(of ($crates) crates in the lock file\)" }
    } | ignore
    0
  } catch {|e|
    if (interrupted $e) { $e.raw } else { $env.LAST_EXIT_CODE }
  }
  if $code != 0 { fail build_failed "cargo build failed" --hint "see the compiler output above" }
}

# A binary of the workspace: from `dir` when given (already built ones, e.g. target/debug), else the
# release build.
def bin [name: string, dir?: string]: nothing -> path {
  if $dir == null or $dir == "" { target-dir | path join release $name } else { $dir | path expand | path join $name }
}

# Cargo's target directory (CARGO_TARGET_DIR when set, as cargo does).
def target-dir []: nothing -> path {
  let t = ($env.CARGO_TARGET_DIR? | default "")
  if $t != "" { $t | path expand } else { root | path join rust target }
}

# The dispatcher's environment for the stack `s`.
def dispatcher-env [s: record]: nothing -> record {
  let c = (load-contract)
  {
    ($c.env.REDIS_URL): $s.redis_url
    ($c.env.API_TOKEN): $s.token
    ($c.env.GITEA_WEBHOOK_SECRET): $s.gitea_secret
    ($c.env.GITHUB_WEBHOOK_SECRET): $s.github_secret
    ($c.env.URL): $s.url
    ($c.env.LISTEN): ($s.url | str replace "http://" "")
    # What the local agents clone (file:// in local mode): the dispatcher refuses anything else at submit.
    ($c.env.ALLOWED_SCHEMES): "file,https,http,ssh"
    # The agents' registry: an `image.registry` naming another host is refused at submit (issue 17 §1).
    ($c.env.REGISTRY): ($s.registry? | default "")
    # The local registry speaks plain HTTP: artifact downloads and deletions (issue 23 §2) go there.
    ($c.env.REGISTRY_INSECURE): "true"
  }
}

# Start the dispatcher of the stack `s` and wait until it is ready.
def start-dispatcher [s: record] {
  let c = (load-contract)
  step $"starting raibid-dispatcher on ($s.url)"
  spawn-bg dispatcher [(bin raibid-dispatcher ($s.bin_dir? | default ""))] (dispatcher-env $s) | ignore
  wait-http $"($s.url)($c.http.READYZ_PATH)" "the dispatcher"
}

# Start a program in the background, in its own session, with its output in a log file.
# Arguments go in as argv; nothing is put through a shell string. The program holds the lock file
# locks/<name>.lock of the state dir for its whole life (`flock --no-fork` execs it with the lock's
# descriptor open, and what it starts inherits it): a second one of the same name in the same state
# dir cannot start (so never two Redis on one AOF directory), and `down` finds every process of the
# state dir by the lock it holds, whether or not its pid was recorded.
def spawn-bg [name: string, argv: list<string>, envs: record = {}]: nothing -> int {
  let logs = (state | path join logs)
  mkdir $logs
  mkdir (lock-dir)
  let log = ($logs | path join $"($name).log")
  let lock = (lock-dir | path join $"($name).lock")
  let pid = (with-env ($envs | merge {RAIBID_BG_LOG: $log}) {
    ^setsid sh -c 'exec "$@" >>"$RAIBID_BG_LOG" 2>&1 < /dev/null & echo $!' raibid-spawn flock --nonblock ...(flock-no-fork) $lock ...$argv | str trim | into int
  })
  test-pause $"spawned-($name)"
  let pids = (state | path join pids)
  mkdir $pids
  $pid | into string | save -f ($pids | path join $"($name).pid")
  $pid
}

def lock-dir []: nothing -> path { state | path join locks }

# `--no-fork` where flock has it (util-linux 2.38+; the recorded pid is then the service's own). An
# older flock forks the service, which inherits the locked descriptor: `down` finds both by the lock.
def flock-no-fork []: nothing -> list<string> {
  if ((do { ^flock --help } | complete).stdout | str contains "--no-fork") { [--no-fork] } else { [] }
}

# Every process of this state dir's stack: those holding one of its lock files (services, and what
# they started unless it closed the descriptor). One row per process: the service's name and its pid.
def stack-procs []: nothing -> table {
  let locks = (lock-dir)
  if not ($locks | path exists) { return [] }
  let fds = (glob /proc/[0-9]*/fd)
  if ($fds | is-empty) { return [] }
  let found = (do { ^find ...$fds -maxdepth 1 -lname ($locks | path join "*.lock") -printf "%p %l\n" } | complete).stdout
  $found | lines | parse --regex '^/proc/(?<pid>\d+)/fd/\d+ (?<lock>.*)$'
  | each {|r| {name: ($r.lock | path basename | str replace --regex '\.lock$' ''), pid: ($r.pid | into int)} }
  | uniq-by pid
  | where {|r| $r.pid != $nu.pid }
}

# A test hook: with RAIBID_DEV_TEST_PAUSE=<point>, `up` says `paused at <point>` and waits there (for
# a test to interrupt it at a defined point). Unset, it does nothing.
def test-pause [point: string] {
  if ($env.RAIBID_DEV_TEST_PAUSE? | default "") != $point { return }
  print -e $"paused at ($point)"
  loop { sleep 1sec }
}

# One line on what a stopped `up` left running (processes of the state dir), for the user to clean up.
def left-running []: nothing -> string {
  let left = (stack-procs)
  if ($left | is-empty) { return "nothing is left running" }
  # In the order `up` starts them (not /proc's: pids wrap around).
  let rank = {|n| [redis registry dispatcher] | enumerate | where item == $n | get -o 0.index | default 3 }
  let names = ($left | group-by name | transpose name procs | sort-by -c {|a, b| (do $rank $a.name) < (do $rank $b.name) }
    | each {|g| $"($g.name) \(pid ($g.procs.pid | str join ', ')\)" } | str join ", ")
  $"still running: ($names); (dev-cmd down) stops them"
}

# The Ctrl-C reaches Nushell and the foreground command at once: Nushell may see it only once a handler
# runs, and a second Ctrl-C may come. So a handler checks and looks around under `try`, twice.
def is-interrupt [e: record]: nothing -> bool { try { interrupted $e } catch { true } }

# Print the line `say` makes and exit 130; a Ctrl-C that lands meanwhile makes it try again.
def interrupt-exit [say: closure] {
  try { print -e (do $say) } catch { try { print -e (do $say) } catch { try { print -e "interrupted" } } }
  exit 130
}

# `./scripts/dev.sh <sub>` as the user types it for this stack (with RAIBID_STATE_DIR when it has its own).
def dev-cmd [sub: string]: nothing -> string {
  let sd = if ($env.RAIBID_STATE_DIR? | default "") != "" { $"RAIBID_STATE_DIR=(state) " } else { "" }
  $"($sd)./scripts/dev.sh ($sub)"
}

def alive [pid: int]: nothing -> bool {
  (do { ^kill -0 $pid } | complete).exit_code == 0
}

def free-port []: nothing -> int { port }

def wait-http [url: string, what: string, --seconds: int = 30] {
  let deadline = (date now) + ($seconds * 1sec)
  loop {
    let ok = (try { http get --full --allow-errors $url | get status } catch { 0 }) == 200
    if $ok { return }
    if (date now) > $deadline {
      fail not_ready $"($what) did not become ready at ($url) within ($seconds)s" --hint $"look at (state | path join logs)"
    }
    sleep 100ms
  }
}

def random-secret []: nothing -> string { random chars --length 40 }

# The settings of the running stack (secrets generated once per state dir, file mode 600).
def stack-env []: nothing -> record {
  let f = (state | path join env.json)
  if not ($f | path exists) {
    fail not_running "no local stack here" --hint "start one with ./scripts/dev.sh up"
  }
  open $f
}

def print-env-lines [s: record] {
  let c = (load-contract).env
  print $"export ($c.URL)=($s.url) ($c.API_TOKEN)=($s.token) ($c.REDIS_URL)=($s.redis_url) ($c.GITEA_WEBHOOK_SECRET)=($s.gitea_secret) ($c.GITHUB_WEBHOOK_SECRET)=($s.github_secret)"
  if ($s.registry? != null) { print $"export ($c.REGISTRY)=($s.registry)" }
}

# The tools image jobs need (Buildah, skopeo, a registry, a static busybox for FROM scratch test images).
def ensure-image-tools [] {
  ensure-apt buildah buildah
  ensure-apt skopeo skopeo
  ensure-apt docker-registry docker-registry
  if not ("/bin/busybox" | path exists) { ensure-apt busybox busybox-static }
}

# Start the local OCI registry (Debian's docker-registry) at `addr` (host:port), data in the state dir.
def start-registry [addr: string] {
  let dir = (state | path join registry)
  mkdir ($dir | path join data)
  let cfg = ($dir | path join config.yml)
  {
    version: "0.1"
    log: {level: warn}
    storage: {filesystem: {rootdirectory: ($dir | path join data)}, delete: {enabled: true}}
    http: {addr: $addr}
  } | to yaml | save -f $cfg
  step $"starting docker-registry on ($addr) \(data in ($dir | path join data)\)"
  spawn-bg registry [docker-registry serve $cfg] | ignore
  wait-http $"http://($addr)/v2/" "the local registry"
}

# Start redis-server on `port` with its AOF in the state dir, and wait until it answers. The lock it
# holds (spawn-bg) makes a second Redis on the same directory exit at once: that is reported, not waited on.
# It requires `password` (build steps share the host's loopback: docs/security.md); the password goes in
# through a 0600 config file in the state dir, never on a command line.
def start-redis [port: int, password: string] {
  let dir = (state | path join redis)
  mkdir $dir
  let conf = ($dir | path join redis.conf)
  $"requirepass ($password)\n" | save -f $conf
  ^chmod 600 $conf
  step $"starting redis-server on 127.0.0.1:($port) \(appendonly yes, appendfsync always, a password\)"
  let pid = (spawn-bg redis [redis-server $conf --bind 127.0.0.1 --port ($port | into string) --appendonly yes --appendfsync always --save "" --dir $dir])
  let deadline = (date now) + 30sec
  loop {
    let pong = (with-env {REDISCLI_AUTH: $password} { do { ^redis-cli --no-auth-warning -h 127.0.0.1 -p ($port | into string) ping } | complete }).stdout | str trim
    if $pong == "PONG" { return }
    if not (alive $pid) {
      fail redis_failed $"redis-server exited at once: (open --raw (state | path join logs redis.log) | str trim | lines | last 1 | str join '')" --hint $"another Redis may use ($dir): ./scripts/dev.sh down first"
    }
    if (date now) > $deadline { fail not_ready $"redis-server did not answer on port ($port) within 30s" --hint $"look at (state | path join logs redis.log)" }
    sleep 50ms
  }
}

# `want` when it is free, else a free port (saying so).
def keep-port [want: any, what: string]: nothing -> int {
  if $want == null { return (free-port) }
  let ok = (try { port $want $want; true } catch { false })
  if $ok { return $want }
  let p = (free-port)
  warn $"port ($want) of the ($what) is taken by another program; using ($p) this time"
  $p
}

# The stack's settings, kept in settings.json across `down`/`up` (so the URL, the token, eval'd shells
# and an open raibid-top stay valid): ports, API token, webhook secrets. New secrets the first time;
# a new API token with --rotate-token.
def stack-settings [port: any, rotate_token: bool]: nothing -> record {
  let f = (state | path join settings.json)
  let old = if ($f | path exists) { open $f } else { {} }
  let s = {
    port: (keep-port ($port | default $old.port?) "dispatcher")
    redis_port: (keep-port $old.redis_port? "Redis")
    registry_port: (keep-port $old.registry_port? "registry")
    token: (if $rotate_token or $old.token? == null { random-secret } else { $old.token })
    gitea_secret: ($old.gitea_secret? | default (random-secret))
    github_secret: ($old.github_secret? | default (random-secret))
    redis_password: ($old.redis_password? | default (random-secret))
  }
  mkdir (state)
  $s | to json | save -f $f
  ^chmod 600 $f
  $s
}

# `up --gpu` runs only where a GPU agent can start: the NVIDIA driver's nvidia-smi lists a GPU. Refuses with the
# reason otherwise (GPU jobs then wait in raibid:jobs:gpu for an agent of kind gpu; their lag is visible).
def require-gpu [] {
  let hint = "start without --gpu: GPU jobs then wait (queued, their lag visible in ./scripts/dev.sh status) until an agent of kind gpu runs somewhere; on a machine with a GPU, ./scripts/gpu-check.sh checks the whole path"
  if (which nvidia-smi | is-empty) {
    fail no_gpu "--gpu needs an NVIDIA GPU and its driver: nvidia-smi is not on the PATH, so no GPU agent could start here" --hint $hint
  }
  let r = (do { ^nvidia-smi -L } | complete)
  if $r.exit_code != 0 or ($r.stdout | str trim | is-empty) {
    let why = ($r.stdout + $r.stderr | lines | first 1 | str join "" | str trim)
    fail no_gpu $"--gpu needs an NVIDIA GPU: `nvidia-smi -L` lists none \(exit ($r.exit_code)(if $why != '' { $': ($why)' } else { '' })\)" --hint $hint
  }
}

# Start the local stack: Redis (AOF on), the dispatcher and a warm agent pool; then run a demo job.
# Ctrl-C at any point stops `up` with one line saying what is still running; `down` stops it.
@example "start with 4 agents and no demo" { ./scripts/dev.sh up --agents 4 --no-demo }
@example "a queue without consumers, to watch the lag KEDA scales on" { ./scripts/dev.sh up --agents 0 }
@example "already built debug binaries, a state dir of its own (as raibid-top's tmux test does)" { RAIBID_STATE_DIR=/tmp/st ./scripts/dev.sh up --bin-dir rust/target/debug --agents 1 --no-demo }
@example "one more agent serving GPU jobs, on a machine with an NVIDIA GPU and its driver" { ./scripts/dev.sh up --gpu }
def "main up" [
  --agents: int     # warm pool size (default: half the cores, at least 1; 0 = no consumer)
  --no-demo         # skip the demo job
  --port: int       # dispatcher port (default: the one this state dir used last, else a free one)
  --bin-dir: string # run raibid-dispatcher/raibid-agent from this directory as they are (no cargo build --release)
  --rotate-token    # a new API token (default: the one this state dir used last)
  --gpu             # also start one agent serving kind gpu (RAIBID_AGENT_KINDS=gpu); refused where no GPU is
] {
  start-clock
  try {
    up-stack $agents $no_demo $port $bin_dir $rotate_token $gpu
  } catch {|e|
    if (is-interrupt $e) { interrupt-exit { $"(elapsed) !! interrupted: (left-running)" } }
    if ($e.details?.code? != "raibid::already_running") and ((stack-procs) | is-not-empty) { warn $"up failed; (left-running)" }
    $e.raw
  }
}

def up-stack [agents: any, no_demo: bool, port: any, bin_dir: any, rotate_token: bool, gpu: bool] {
  let n = ($agents | default ([1 ((sys cpu | length) // 2)] | math max))
  if $n < 0 { fail bad_argument "--agents must be 0 or more" }
  if $gpu { require-gpu }
  let left = (stack-procs)
  if ($left | is-not-empty) {
    let url = if ((state | path join env.json) | path exists) { $" \(dispatcher ((open (state | path join env.json)).url)\)" } else { "" }
    fail already_running $"a local stack is already running here($url): ($left | get name | uniq | str join ', ')" --hint "./scripts/dev.sh down first (it stops what any earlier up left), or ./scripts/dev.sh env to use it"
  }
  ensure-apt redis-server redis-server
  ensure-apt redis-cli redis-tools
  ensure-apt git git
  ensure-apt bwrap bubblewrap          # every build step runs in a bubblewrap sandbox (docs/adr/0011)
  ensure-image-tools
  if $bin_dir == null {
    ensure-build --release
  } else {
    for b in [raibid-dispatcher raibid-agent] {
      if not ((bin $b $bin_dir) | path exists) {
        fail missing_binary $"no ($b) in ($bin_dir | path expand)" --hint "build it first (cargo build --bins), or leave out --bin-dir"
      }
    }
  }
  let c = (load-contract)
  let k = (stack-settings $port $rotate_token)
  let s = {
    url: $"http://127.0.0.1:($k.port)"
    token: $k.token
    redis_url: $"redis://:($k.redis_password)@127.0.0.1:($k.redis_port)"
    gitea_secret: $k.gitea_secret
    github_secret: $k.github_secret
    registry: $"127.0.0.1:($k.registry_port)"
    bin_dir: ($bin_dir | default "" | if $in == "" { "" } else { $in | path expand })
  }
  # Written before anything starts: `env` works at once, and the pids follow in pids/ as each starts.
  $s | to json | save -f (state | path join env.json)
  ^chmod 600 (state | path join env.json)
  start-redis $k.redis_port $k.redis_password
  test-pause redis
  start-registry $s.registry
  test-pause registry
  start-dispatcher $s
  test-pause dispatcher
  let agent_env = {
    ($c.env.REDIS_URL): $s.redis_url
    ($c.env.ALLOWED_SCHEMES): "file,https,http,ssh"
    ($c.env.WORKSPACE_DIR): (state | path join workspaces)
    ($c.env.CACHE_DIR): (state | path join cache)
    ($c.env.AGENT_KINDS): "rust,image"
    ($c.env.REGISTRY): $s.registry
    ($c.env.REGISTRY_INSECURE): "true"
    ($c.env.BUILDAH_STORAGE_DRIVER): "vfs"
  }
  for i in 1..$n {
    if $n == 0 { break }
    spawn-bg $"agent-($i)" [(bin raibid-agent $s.bin_dir) --name $"local-agent-($i)"] $agent_env | ignore
  }
  if $gpu {
    # The GPU agent probes the GPU itself at start and exits 1 without one (its log says what it looked for).
    step "starting one agent serving kind gpu (stream raibid:jobs:gpu)"
    spawn-bg gpu-agent [(bin raibid-agent $s.bin_dir) --name local-gpu-agent] ($agent_env | merge {($c.env.AGENT_KINDS): "gpu"}) | ignore
  }
  test-pause agents
  ok $"stack up: redis, dispatcher, registry ($s.registry), ($n) agent\(s\) serving rust and image jobs(if $gpu { ', 1 serving gpu jobs' } else { '' }); logs in (state | path join logs)"
  if not $no_demo and $n > 0 { demo $s }
  next-hints
}

# The `Next:` lines after `up`: commands that work as printed, from the checkout, in sh or bash (with
# RAIBID_STATE_DIR when the stack has a state dir of its own).
def next-hints [] {
  let hints = [
    [cmd note];
    [$"eval \"$\((dev-cmd env)\)\"" "RAIBID_URL, RAIBID_API_TOKEN, ... for this stack"]
    ["./scripts/raibid jobs" "the human CLI over the API (after the eval above)"]
    [(dev-cmd status) "queue, agents"]
    [(dev-cmd down) "stop everything (the next up keeps the URL and token)"]
  ]
  let w = ($hints.cmd | each {|c| $c | str length } | math max)
  print ""
  print "Next:"
  for h in $hints { print $"  ($h.cmd | fill -w $w)  # ($h.note)" }
}

def demo [s: record] {
  step "demo: a git repository from examples/hello-raibid, submitted to the API, its log followed live"
  let repo = (state | path join demo-repo)
  rm -rf $repo
  mkdir ($repo | path join src)
  let ex = (root | path join examples hello-raibid)
  for f in [Cargo.toml Cargo.lock .gitignore src/lib.rs] { cp ($ex | path join $f) ($repo | path join $f) }
  do {
    cd $repo
    run-cmd [git init -q -b main] | ignore
    run-cmd [git -c user.name=raibid -c user.email=demo@raibid.invalid add -A] | ignore
    run-cmd [git -c user.name=raibid -c user.email=demo@raibid.invalid commit -qm "demo commit"] | ignore
  }
  let headers = {Authorization: $"Bearer ($s.token)"}
  let job = (http post --content-type application/json --headers $headers $"($s.url)/api/v1/jobs" {repo_url: $"file://($repo)", ref: "main"})
  info $"submitted job ($job.id); following its log:"
  follow-log $s $job.id
  let final = (http get --headers $headers $"($s.url)/api/v1/jobs/($job.id)")
  let steps = ($final.steps | each {|st| $"($st.name) ($st.status) ($st.duration_ms)ms" } | str join ", ")
  if $final.status == "succeeded" { ok $"demo job ($job.id) succeeded: ($steps)" } else { warn $"demo job ($job.id) ended ($final.status): ($final.failure_reason)" }
}

# Print a job's log live (curl reads the SSE stream; the URL and token are argv, not shell text).
def follow-log [s: record, id: string] {
  let url = $"($s.url)/api/v1/jobs/($id)/logs?follow=true"
  ^curl -sN --fail -H $"Authorization: Bearer ($s.token)" $url
  | lines
  | each {|l|
      if ($l | str starts-with "data: ") {
        let d = ($l | str substring 6.. | from json)
        if ($d.line? != null) { print $"  [($d.step)] ($d.line)" } else if ($d.status? != null) { print $"  -- job ($d.status)" }
      }
    }
  | ignore
}

# Stop the local stack; leaves no process behind. It stops what any earlier `up` of this state dir
# left, finished or interrupted: the pids it recorded (pids/) and every process holding one of the
# state dir's lock files (locks/, see spawn-bg), never processes found by name. The settings (port,
# token, secrets) and Redis' data stay for the next `up`.
def "main down" [] {
  start-clock
  let pids_dir = (state | path join pids)
  let recorded = if ($pids_dir | path exists) {
    ls $pids_dir | where name =~ '\.pid$' | each {|f| {name: ($f.name | path basename | str replace '.pid' ''), pid: (open --raw $f.name | str trim | into int)} }
  } else { [] }
  # A recorded pid is stopped only while it holds the state dir's lock: after a reboot the same
  # number may be someone else's process.
  let found = (stack-procs)
  let entries = ($recorded | where {|e| $e.pid in $found.pid } | append $found | uniq-by pid)
  if ($entries | is-empty) and ($recorded | is-empty) {
    rm -f (state | path join env.json)
    ok "nothing running"
    return
  }
  # Agents and the dispatcher first, all at once (SIGTERM: they finish what they do), Redis last.
  for group in [($entries | where name != "redis") ($entries | where name == "redis")] {
    for g in ($group | where {|e| alive $e.pid } | group-by name | transpose name procs) {
      info $"stopping ($g.name) \(pid ($g.procs.pid | str join ', ')\)"
      for e in $g.procs { do { ^kill -TERM $e.pid } | complete | ignore }
    }
    let deadline = (date now) + 15sec
    while ($group | any {|e| alive $e.pid }) and ((date now) < $deadline) { sleep 50ms }
    for e in $group {
      # Each service runs in its own session: kill whatever is left of it (build steps included).
      do { ^pkill -KILL -s $e.pid } | complete | ignore
      do { ^kill -KILL $e.pid } | complete | ignore
    }
  }
  # Any straggler still holding a lock (a step that left its service's session).
  let deadline = (date now) + 5sec
  while ((stack-procs) | is-not-empty) and ((date now) < $deadline) {
    for e in (stack-procs) { do { ^kill -KILL $e.pid } | complete | ignore }
    sleep 50ms
  }
  let still = (stack-procs)
  if ($still | is-not-empty) {
    fail stop_failed $"could not stop: ($still | each {|e| $'($e.name) pid ($e.pid)' } | str join ', ')" --hint "kill them by hand"
  }
  rm -rf $pids_dir
  rm -f (state | path join env.json)
  ok "local stack stopped"
}

# Restart one service of the running stack: stop it (SIGTERM, then SIGKILL after 15 s) and start it
# again the way `up` did, with the same settings and binaries.
@example "restart the dispatcher (clients reconnect by themselves)" { ./scripts/dev.sh restart dispatcher }
def "main restart" [
  service: string   # dispatcher (the only one for now)
] {
  start-clock
  if $service != "dispatcher" {
    fail bad_argument $"cannot restart `($service)`" --hint "only `dispatcher` can be restarted; ./scripts/dev.sh down and up for the rest"
  }
  let s = (stack-env)
  let pidfile = (state | path join pids dispatcher.pid)
  if ($pidfile | path exists) {
    let pid = (open --raw $pidfile | str trim | into int)
    if (alive $pid) {
      info $"stopping dispatcher \(pid ($pid)\)"
      do { ^kill -TERM $pid } | complete | ignore
      let deadline = (date now) + 15sec
      while (alive $pid) and ((date now) < $deadline) { sleep 50ms }
      do { ^pkill -KILL -s $pid } | complete | ignore
      do { ^kill -KILL $pid } | complete | ignore
    }
  }
  start-dispatcher $s
  ok $"dispatcher restarted on ($s.url)"
}

# Print `export …` lines for the running stack (both binaries and raibid.nu read these variables).
@example "use the running stack from this shell" { eval "$(./scripts/dev.sh env)" }
def "main env" [] {
  print-env-lines (stack-env)
}

# Watch and steer the running stack in raibid-top (the terminal UI; it talks to the dispatcher's API only).
@example "open the terminal UI on the local stack" { ./scripts/dev.sh top }
def "main top" [
  ...args: string   # extra raibid-top arguments, e.g. --max-jobs 2000
] {
  quiet-interrupt { top $args }
}

# Run `body`; a Ctrl-C ends it with one line (exit 130) instead of a Nushell trace.
def quiet-interrupt [body: closure] {
  try { do $body } catch {|e|
    if (is-interrupt $e) { interrupt-exit { "interrupted" } }
    $e.raw
  }
}

def top [args: list<string>] {
  let s = (stack-env)
  let c = (load-contract)
  ensure-build --release
  with-env {($c.env.URL): $s.url, ($c.env.API_TOKEN): $s.token} {
    ^(bin raibid-top) ...$args
  }
}

# Queue figures and agents of the running stack.
def "main status" [] {
  let s = (stack-env)
  let headers = {Authorization: $"Bearer ($s.token)"}
  print (http get --headers $headers $"($s.url)/api/v1/queue" | table)
  print (http get --headers $headers $"($s.url)/api/v1/agents" | get agents | table)
}

# Run a test command with its output streaming; return its exit code.
def run-suite [dir: path, cmd: list<string>]: nothing -> int {
  try {
    do { cd $dir; ^($cmd | first) ...($cmd | skip 1) }
    0
  } catch {|e|
    if (interrupted $e) { $e.raw } else { $env.LAST_EXIT_CODE }
  }
}

# Run every test of the project: Rust (real Redis, git, cargo), Nushell, GitOps checks.
def "main test" [
  --only: string   # run one suite: rust, nu, gitops or mcp
] {
  start-clock
  try { run-tests $only } catch {|e|
    if (is-interrupt $e) { interrupt-exit { $"(elapsed) !! interrupted" } }
    $e.raw
  }
}

def run-tests [only: any] {
  ensure-apt redis-server redis-server
  ensure-apt git git
  ensure-apt bwrap bubblewrap          # every build step runs in a bubblewrap sandbox (docs/adr/0011)
  ensure-apt age age
  ensure-apt curl curl
  ensure-apt tmux tmux                 # raibid-top's end-to-end test runs it in a real terminal
  ensure-apt nix-instantiate nix-bin   # the flake.nix parse/eval checks of the GitOps suite
  ensure-image-tools                   # the image-job tests: real Buildah, skopeo, docker-registry, busybox
  # sops (a PyPI package) and the Python tools live in the venv; every suite may use them.
  let py = (ensure-venv)
  $env.PATH = ($env.PATH | prepend ($py | path dirname))
  let suites = if $only == null { [rust nu gitops mcp] } else { [$only] }
  mut failed = []
  for suite in $suites {
    step $"suite: ($suite)"
    let code = match $suite {
      "rust" => {
        # Lints first (rustfmt, clippy with warnings as errors), then every test.
        let lint = (run-suite (root | path join rust) [cargo fmt --all -- --check])
        let clippy = (run-suite (root | path join rust) [cargo clippy --locked --workspace --all-targets -- -D warnings])
        let tests = (run-suite (root | path join rust) [cargo test --locked --workspace --no-fail-fast])
        [$lint $clippy $tests] | math max
      }
      "nu" => { run-suite (root) [nu --no-config-file (root | path join scripts tests run.nu)] }
      "gitops" => { run-suite (root) [$py -m pytest -q tests/gitops] }
      "mcp" => {
        # The official MCP Python SDK against real Redis + the debug binaries + real cargo builds.
        let mpy = (ensure-mcp-venv)
        let build = (run-suite (root | path join rust) [cargo build --locked --bins])
        if $build != 0 { $build } else { run-suite (root) [$mpy -m pytest -q tests/mcp] }
      }
      _ => { fail bad_argument $"unknown suite ($suite)" --hint "use rust, nu, gitops or mcp" }
    }
    if $code != 0 { $failed = ($failed | append $suite) }
  }
  if ($failed | is-not-empty) {
    fail tests_failed $"failing suites: ($failed | str join ', ')" --hint "see the output above"
  }
  ok $"all suites passed: ($suites | str join ', ')"
}

# raibid-ci local mode. Commands: up, down, restart, env, status, top, test (and `./scripts/dev.sh nu`: the pinned Nushell).
def main [] {
  print (help main)
}

