# Progress output for long-running scripts: every line shows the elapsed time since the script started and,
# inside a stage, the stage. Everything goes to stderr, so command results on stdout stay pipeable.

# Remember when the run started (call once from `main`).
export def --env start-clock []: nothing -> nothing {
  $env.RAIBID_CLOCK_START = (date now)
}

# Elapsed time since start-clock as mm:ss.
export def elapsed []: nothing -> string {
  # A child nu (a test run by `dev.sh test`) inherits the variable as text: read it back as a date.
  let start = ($env.RAIBID_CLOCK_START? | default (date now) | if ($in | describe) == "string" { $in | into datetime } else { $in })
  let secs = (((date now) - $start) / 1sec | math floor)
  $"($secs // 60 | fill -a r -c '0' -w 2):($secs mod 60 | fill -a r -c '0' -w 2)"
}

def emit [tag: string, msg: string] {
  let stage = ($env.RAIBID_STAGE? | default "")
  let where = if ($stage | is-empty) { "" } else { $"[($stage)] " }
  print -e $"(elapsed) ($tag) ($where)($msg)"
}

export def info [msg: string] { emit "  " $msg }
export def ok [msg: string] { emit "ok" $msg }
export def warn [msg: string] { emit "!!" $msg }
export def step [msg: string] { emit "->" $msg }
