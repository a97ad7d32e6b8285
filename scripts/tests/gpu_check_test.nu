# scripts/gpu-check.sh (issue 20 §3) runs only where a GPU is: here (no GPU) it must refuse, clearly and with exit
# code 2, before it builds or starts anything. The GPU path itself is checked by running the script on a Spark.
# The example it submits (examples/gpu-hello) must compile without CUDA: its tests are built here.

use std/assert
use std/testing *
use helpers.nu *

const SCRIPT = path self ../gpu-check.sh

# Run the script with PATH = a directory holding only the given programs (links to the real ones) and fakes.
def run-check [tools: list<string>, fakes: record = {}]: nothing -> record {
  let bin = (mktemp -d -t raibid-gpu-check-test-XXXXXX)
  for t in $tools {
    let real = (which $t | get 0?.path?)
    if $real != null { ^ln -s $real ($bin | path join $t) }
  }
  for f in ($fakes | transpose name body) {
    let p = ($bin | path join $f.name)
    $"#!/bin/sh\n($f.body)\n" | save -f $p
    ^chmod +x $p
  }
  let r = (with-env {PATH: $bin} { do { ^/bin/sh $SCRIPT } | complete })
  rm -rf $bin
  $r
}

@test
def refuses_without_nvidia_smi [] {
  let r = (run-check [])
  assert equal $r.exit_code 2 $"exit code ($r.exit_code), stderr: ($r.stderr)"
  assert str contains $r.stderr "gpu-check: nvidia-smi not found: this check needs a machine with an NVIDIA GPU and its driver"
  assert equal $r.stdout ""
}

@test
def refuses_when_the_driver_does_not_answer [] {
  let r = (run-check [head] {nvidia-smi: "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"; exit 9"})
  assert equal $r.exit_code 2 $r.stderr
  assert str contains $r.stderr "gpu-check: nvidia-smi -L failed: the NVIDIA driver does not answer (NVIDIA-SMI has failed"
}

@test
def refuses_without_its_tools_before_building [] {
  let r = (run-check [head] {nvidia-smi: "echo 'GPU 0: NVIDIA GB10 (UUID: GPU-00000000-0000-0000-0000-000000000000)'"})
  assert equal $r.exit_code 2 $r.stderr
  assert str contains $r.stderr "gpu-check: cargo not found"
  assert not ($r.stderr | str contains "building")
}

@test
def the_gpu_example_builds_without_cuda [] {
  let target = (mktemp -d -t raibid-gpu-hello-target-XXXXXX)
  let r = (do { cd ($REPO_ROOT | path join examples gpu-hello); ^cargo build --locked --offline --tests --target-dir $target } | complete)
  let r = if $r.exit_code != 0 and ($r.stderr | str contains "offline") {
    do { cd ($REPO_ROOT | path join examples gpu-hello); ^cargo build --locked --tests --target-dir $target } | complete
  } else { $r }
  rm -rf $target
  assert equal $r.exit_code 0 $r.stderr
}

@test
def the_gpu_example_asks_for_a_gpu [] {
  let cfg = (open --raw ($REPO_ROOT | path join examples gpu-hello .raibid.yaml) | from yaml)
  assert equal $cfg.gpu true
  assert ($cfg.steps | any {|s| $s.run | str starts-with "cargo test" })
}
