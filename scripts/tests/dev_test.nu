# Tests of scripts/dev.nu's local-stack options that raibid-top's tmux test relies on: a state directory
# of its own (RAIBID_STATE_DIR) and already built binaries (`up --bin-dir`). The full stack itself is
# exercised by the Rust suite (raibid-top/tests/tmux.rs runs dev.sh up / env / restart / down).

use std/assert
use std/testing *
use helpers.nu *

def --wrapped dev [...args: string]: nothing -> record {
  do { ^$nu.current-exe --no-config-file ($REPO_ROOT | path join scripts dev.nu) ...$args } | complete
}

@test
def up_takes_a_bin_dir_and_restart_names_the_dispatcher [] {
  let up = (dev up --help)
  assert equal $up.exit_code 0 $up.stderr
  assert str contains $up.stdout "--bin-dir"
  let restart = (dev restart --help)
  assert equal $restart.exit_code 0 $restart.stderr
  assert str contains $restart.stdout "dispatcher"
}

@test
def env_reads_the_stack_of_raibid_state_dir [] {
  let dir = (mktemp -d -t raibid-state-XXXXXX)
  {url: "http://127.0.0.1:1", token: "t0k", redis_url: "redis://127.0.0.1:2", gitea_secret: "g", github_secret: "h", redis_pid: 0, registry: "127.0.0.1:3", bin_dir: ""}
  | to json | save -f ($dir | path join env.json)
  let out = (with-env {RAIBID_STATE_DIR: $dir} { dev env })
  assert equal $out.exit_code 0 $out.stderr
  assert str contains $out.stdout "RAIBID_URL=http://127.0.0.1:1"
  assert str contains $out.stdout "RAIBID_REDIS_URL=redis://127.0.0.1:2"
  # Another (empty) state dir has no stack.
  let empty = (mktemp -d -t raibid-state-XXXXXX)
  let none = (with-env {RAIBID_STATE_DIR: $empty} { dev env })
  assert ($none.exit_code != 0)
  assert str contains $none.stderr "no local stack here"
  rm -rf $dir $empty
}

@test
def restart_refuses_what_it_cannot_restart [] {
  let out = (dev restart redis)
  assert ($out.exit_code != 0)
  assert str contains $out.stderr "cannot restart `redis`"
}

@test
def up_with_a_bin_dir_lacking_the_binaries_says_which_one [] {
  let dir = (mktemp -d -t raibid-state-XXXXXX)
  let bins = (mktemp -d -t raibid-bins-XXXXXX)
  let out = (with-env {RAIBID_STATE_DIR: $dir} { dev up --bin-dir $bins --agents 0 --no-demo })
  assert ($out.exit_code != 0)
  assert str contains $out.stderr $"no raibid-dispatcher in ($bins)"
  assert (not ($dir | path join env.json | path exists)) "nothing was started"
  rm -rf $dir $bins
}

# `up --gpu` where no GPU is (this machine): refused before anything starts, with the reason and what to do.
# (miette wraps long messages: the text is compared with its line breaks joined.)
@test
def up_gpu_refuses_without_a_gpu [] {
  let dir = (mktemp -d -t raibid-state-XXXXXX)
  let bin = (mktemp -d -t raibid-path-XXXXXX)
  let flat = {|o| $o.stderr | str replace --all --regex '\s*\n\s*(\|\s*)?' ' ' }
  let out = (with-env {RAIBID_STATE_DIR: $dir, PATH: $bin} { dev up --gpu --agents 0 --no-demo })
  assert ($out.exit_code != 0)
  let text = (do $flat $out)
  assert str contains $text "raibid::no_gpu"
  assert str contains $text "nvidia-smi is not on the PATH, so no GPU agent could start here"
  assert str contains $text "start without --gpu: GPU jobs then wait"
  # A driver that does not answer is refused too, with its first line.
  "#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\nexit 9\n" | save -f ($bin | path join nvidia-smi)
  ^chmod +x ($bin | path join nvidia-smi)
  let out = (with-env {RAIBID_STATE_DIR: $dir, PATH: $bin} { dev up --gpu --agents 0 --no-demo })
  assert ($out.exit_code != 0)
  assert str contains (do $flat $out) "`nvidia-smi -L` lists none (exit 9: NVIDIA-SMI has failed"
  assert (not ($dir | path join env.json | path exists)) "nothing was started"
  rm -rf $dir $bin
}
