# The host, as the bootstrap's probes see it: commands, files, HTTP endpoints and a few facts.
#
# Every probe goes through these commands, so tests can point them at a *fake system* instead of the host:
# set RAIBID_FAKE_SYSTEM to a NUON file of recorded outputs (scripts/tests/fixtures/system-*.nuon):
#   {facts: {uid, home, hostname}, missing: [program…], commands: [{argv, exit_code, stdout, stderr}],
#    files: {path: content}, http: [{method, url, status, body}], unreachable: [url prefix…]}
# `{repo}` in argv, paths and URLs stands for the repository root. A command the fake system has no
# recording for is an error (so a new probe cannot silently pass), and nothing can be *changed* through it.

use errors.nu [fail]
use contract.nu [repo-root]

# Is a fake system in use?
export def fake? []: nothing -> bool { ($env.RAIBID_FAKE_SYSTEM? | default "" | is-not-empty) }

def fake-system []: nothing -> record {
  let file = $env.RAIBID_FAKE_SYSTEM
  if not ($file | path exists) { fail fake_system_missing $"RAIBID_FAKE_SYSTEM points to ($file), which does not exist" }
  let root = (repo-root)
  open --raw $file | str replace --all "{repo}" $root | from nuon
}

# Run a probe command. Returns {exit_code, stdout, stderr}; a missing program is exit code 127.
export def run-cmd [
  argv: list<string>   # program and arguments (never through a shell)
  --extra-env: record = {}   # extra environment (e.g. GIT_ASKPASS), not shown anywhere
]: nothing -> record {
  if (fake?) {
    let sys = (fake-system)
    if ($argv.0 in ($sys.missing? | default [])) {
      return {exit_code: 127, stdout: "", stderr: $"($argv.0): command not found"}
    }
    let hit = ($sys.commands? | default [] | where {|c| $c.argv == $argv })
    if ($hit | is-empty) and $argv.0 == "sudo" and ($argv | get -o 1) == "-n" and ($argv | length) > 2 {
      # sudo(8): with -n (non-interactive) sudo never prompts; when a password would be needed it prints
      # "sudo: a password is required" and exits 1. Whether it would is what `sudo -n true` answers on this host.
      let ok = ($sys.commands? | default [] | where {|c| $c.argv == [sudo -n "true"] } | get -o 0.exit_code | default 0) == 0
      if not $ok { return {exit_code: 1, stdout: "", stderr: "sudo: a password is required\n"} }
      return (run-cmd ($argv | skip 2))
    }
    if ($hit | is-empty) and $argv.0 == "cat" and ($argv | length) == 2 {
      # cat(1) (GNU coreutils): the file's bytes on stdout; a missing file is exit 1 with
      # "cat: <path>: No such file or directory" on stderr.
      let content = ($sys.files? | default {} | get -o $argv.1)
      if $content == null { return {exit_code: 1, stdout: "", stderr: $"cat: ($argv.1): No such file or directory\n"} }
      return {exit_code: 0, stdout: $content, stderr: ""}
    }
    if ($hit | is-empty) {
      fail fake_system_unrecorded $"the fake system has no recording for: ($argv | str join ' ')" --hint $"add it to ($env.RAIBID_FAKE_SYSTEM)"
    }
    let c = ($hit | first)
    return {exit_code: ($c.exit_code? | default 0), stdout: ($c.stdout? | default ""), stderr: ($c.stderr? | default "")}
  }
  if (which $argv.0 | is-empty) {
    return {exit_code: 127, stdout: "", stderr: $"($argv.0): command not found"}
  }
  with-env $extra_env { do { ^($argv.0) ...($argv | skip 1) } | complete }
}

# Where a program is installed, or null.
export def which-path [program: string]: nothing -> any {
  if (fake?) {
    if ($program in ((fake-system).missing? | default [])) { null } else { $"/usr/bin/($program)" }
  } else {
    which $program | get -o 0.path
  }
}

# A file's content, or null when it does not exist (or cannot be read).
export def read [path: string]: nothing -> any {
  if (fake?) { return ((fake-system).files? | default {} | get -o $path) }
  if not ($path | path exists) { return null }
  try { open --raw $path } catch { null }
}

export def exists [path: string]: nothing -> bool { (read $path) != null }

# An HTTP probe: {status, body}; status null when the host cannot be reached.
export def http-probe [
  method: string
  url: string
  --headers: record = {}
]: nothing -> record {
  if (fake?) {
    let sys = (fake-system)
    if ($sys.unreachable? | default [] | any {|p| $url | str starts-with $p }) { return {status: null, body: null} }
    let hit = ($sys.http? | default [] | where {|h| $h.method == $method and $h.url == $url })
    if ($hit | is-empty) {
      fail fake_system_unrecorded $"the fake system has no recording for: ($method) ($url)" --hint $"add it to ($env.RAIBID_FAKE_SYSTEM)"
    }
    return ($hit | first | select status body)
  }
  try {
    let r = (http get --full --allow-errors --max-time 10sec --headers $headers $url)
    {status: $r.status, body: $r.body}
  } catch { {status: null, body: null} }
}

# Facts about the host: uid, home, hostname.
export def facts []: nothing -> record {
  if (fake?) { return (fake-system).facts }
  {
    uid: (^id -u | str trim | into int)
    home: $nu.home-dir
    hostname: (sys host | get hostname)
  }
}

# Refuse to change anything while a fake system is in use.
export def guard-real [what: string]: nothing -> nothing {
  if (fake?) {
    fail fake_system_readonly $"refusing to ($what) on a fake system" --hint "use --dry-run with RAIBID_FAKE_SYSTEM"
  }
}
