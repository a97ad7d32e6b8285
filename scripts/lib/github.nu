# A small GitHub REST client: documented headers (Accept, X-GitHub-Api-Version, User-Agent), pagination by
# following the `Link: …; rel="next"` header, and rate-limit awareness (x-ratelimit-remaining/-reset,
# retry-after): it waits for the reset instead of failing, up to RAIBID_GITHUB_RATE_WAIT_MAX seconds.
# The token (GITHUB_TOKEN or GITHUB_TOKEN_FILE) is optional for public repositories and never printed.

use errors.nu [fail]
use http.nu [request parse-link-header]
use secrets.nu [secret-or-null]
use log.nu

const API_VERSION = "2022-11-28"

export def api-base []: nothing -> string {
  $env.RAIBID_GITHUB_API | str trim --right --char "/"
}

export def token []: nothing -> any { secret-or-null GITHUB_TOKEN }

def headers []: nothing -> record {
  let base = {
    Accept: "application/vnd.github+json"
    X-GitHub-Api-Version: $API_VERSION
    User-Agent: "raibid-ci-mirror"
  }
  let t = (token)
  if $t == null { $base } else { $base | insert Authorization $"Bearer ($t)" }
}

# Seconds to wait before retrying, from a response's rate-limit headers (null: not rate limited).
@example "primary limit exhausted" { rate-limit-wait {status: 403, headers: {x-ratelimit-remaining: "0", x-ratelimit-reset: "1000"}} 990 } --result 10
export def rate-limit-wait [res: record, now: int]: nothing -> any {
  let h = $res.headers
  let remaining = ($h.x-ratelimit-remaining? | default "1" | into int)
  if $res.status in [403 429] and ($h.retry-after? != null) {
    return ($h.retry-after | into int)
  }
  if $res.status in [403 429] and $remaining == 0 {
    return ([(($h.x-ratelimit-reset? | default ($now | into string) | into int) - $now) 1] | math max)
  }
  null
}

def epoch-now []: nothing -> int { (date now | into int) // 1_000_000_000 }

def wait-for-reset [secs: int, url: string] {
  let max = ($env.RAIBID_GITHUB_RATE_WAIT_MAX | into int)
  if $secs > $max {
    fail github_rate_limited $"GitHub's rate limit is exhausted for ($secs)s more \(calling ($url)\)" --hint "set GITHUB_TOKEN (5000 requests/hour instead of 60), or re-run later; or raise RAIBID_GITHUB_RATE_WAIT_MAX"
  }
  log warn $"GitHub rate limit reached; waiting ($secs)s for the reset"
  sleep ($secs * 1sec)
}

# Call GitHub (path below the API base, or an absolute URL from a Link header).
export def call [
  method: string
  path: string
  --body: any = null
  --ok: list<int> = [200 201 204]
]: nothing -> any {
  let url = if ($path | str starts-with "http") { $path } else { $"(api-base)($path)" }
  mut attempt = 0
  loop {
    let res = (request $method $url --headers (headers) --body $body --service GitHub --hint "check network access to api.github.com (or RAIBID_GITHUB_API)")
    let wait = (rate-limit-wait $res (epoch-now))
    if $wait != null and $attempt < 3 {
      wait-for-reset $wait $url
      $attempt += 1
      continue
    }
    # Proactively respect the primary limit: the next call would fail, so wait now.
    if $res.status in $ok and ($res.headers.x-ratelimit-remaining? == "0") {
      let secs = ([(($res.headers.x-ratelimit-reset? | default "0" | into int) - (epoch-now)) 0] | math max)
      if $secs > 0 { wait-for-reset $secs $url }
    }
    if $res.status in $ok { return $res }
    let msg = ($res.body | if ($in | describe | str starts-with "record") { $in.message? | default "" } else { $in | into string })
    match $res.status {
      401 => (fail github_unauthorized $"GitHub rejected the token: ($msg)" --hint "check GITHUB_TOKEN (or GITHUB_TOKEN_FILE)")
      403 => (fail github_forbidden $"GitHub forbids ($method) ($path): ($msg)" --hint "webhooks need a token with admin rights on the repository (classic: admin:repo_hook; fine-grained: Webhooks read/write)")
      404 => (fail github_not_found $"GitHub has no ($path): ($msg)" --hint "check the name; private repositories need GITHUB_TOKEN")
      _ => (fail github_error $"GitHub answered ($res.status) to ($method) ($path): ($msg)")
    }
  }
}

# GET every page of a list endpoint by following Link rel="next".
export def get-all [path: string]: nothing -> list<any> {
  mut next: any = $path
  mut out = []
  while $next != null {
    let res = (call GET $next)
    $out = ($out | append $res.body)
    $next = ($res.headers.link? | parse-link-header | get -o next)
  }
  $out
}

export def get-repo [full_name: string]: nothing -> record {
  (call GET $"/repos/($full_name)").body
}

# Every repository of an organization or a user (private ones too when the token can see them).
export def owner-repos [owner: string]: nothing -> list<any> {
  let acct = (call GET $"/users/($owner)").body
  if $acct.type == "Organization" {
    return (get-all $"/orgs/($owner)/repos?type=all&per_page=100")
  }
  let me = if (token) != null { (call GET "/user").body.login } else { null }
  if $me == $owner {
    get-all "/user/repos?affiliation=owner&per_page=100"
  } else {
    get-all $"/users/($owner)/repos?type=owner&per_page=100"
  }
}

export def hooks [full_name: string]: nothing -> list<any> {
  get-all $"/repos/($full_name)/hooks?per_page=100"
}
