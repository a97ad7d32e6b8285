# A small Gitea API client (paths as in Gitea 1.22's swagger, /api/v1 prefixed). URL from RAIBID_GITEA_URL,
# token from RAIBID_GITEA_TOKEN (or its _FILE / config copy), sent as `Authorization: token …`.

use errors.nu [fail]
use http.nu [request parse-link-header]
use secrets.nu [secret]

# Base URL of Gitea's API.
export def api-base []: nothing -> string {
  $"($env.RAIBID_GITEA_URL | str trim --right --char '/')/api/v1"
}

def auth-headers [basic: any]: nothing -> record {
  if $basic != null {
    {Authorization: $"Basic ($'($basic.username):($basic.password)' | encode base64)"}
  } else {
    {Authorization: $"token (secret RAIBID_GITEA_TOKEN --purpose 'the Gitea API')"}
  }
}

# Call Gitea. Returns {status, headers, body}; 401/403/5xx and unexpected statuses raise errors.
export def call [
  method: string           # HTTP method
  path: string             # API path below /api/v1, e.g. /repos/o/r
  --body: any = null       # JSON body
  --ok: list<int> = [200 201 204]  # statuses returned as results (e.g. add 404 to test existence)
  --basic: any = null      # {username, password}: basic auth instead of the token (bootstrap creates tokens)
]: nothing -> record {
  let url = $"(api-base)($path)"
  let res = (request $method $url --headers ({Accept: "application/json"} | merge (auth-headers $basic)) --body $body
    --service Gitea --hint "set RAIBID_GITEA_URL to a Gitea reachable from here (bootstrap's summary prints it)")
  if $res.status in $ok { return $res }
  let msg = ($res.body | if ($in | describe | str starts-with "record") { $in.message? | default "" } else { $in | into string } | str trim)
  match $res.status {
    401 => (fail gitea_unauthorized $"Gitea rejected the token for ($method) ($path): ($msg)" --hint "check RAIBID_GITEA_TOKEN (a token of the Gitea admin or a bot with repo and org write scopes)")
    403 => (fail gitea_forbidden $"Gitea forbids ($method) ($path): ($msg)" --hint "the token's user lacks permission, or the token lacks a scope (needs write:repository, write:organization)")
    404 => (fail gitea_not_found $"Gitea has no ($path) \(($method)\): ($msg)" --hint "check the owner and repository names")
    409 => (fail gitea_conflict $"Gitea reports a conflict for ($method) ($path): ($msg)" --hint "the object exists already; re-run to update it instead")
    422 => (fail gitea_invalid $"Gitea rejected ($method) ($path) as invalid: ($msg)" --hint "this is a bug in the script or an unsupported Gitea version (needs the Gitea 1.22 API)")
    _ => (fail gitea_error $"Gitea answered ($res.status) to ($method) ($path): ($msg)" --hint "look at Gitea's logs: kubectl -n gitea logs deploy/gitea")
  }
}

# GET every page of a list endpoint (`page`/`limit` query, stops on a short page or at the Link `next` end).
export def get-all [path: string, --limit: int = 50]: nothing -> list<any> {
  mut page = 1
  mut out = []
  let sep = if ($path | str contains "?") { "&" } else { "?" }
  loop {
    let res = (call GET $"($path)($sep)page=($page)&limit=($limit)")
    let items = ($res.body | if ($in | describe | str starts-with "record") { $in.data? | default [] } else { $in })
    $out = ($out | append $items)
    let next = ($res.headers.link? | parse-link-header | get -o next)
    if ($items | length) < $limit or $next == null { break }
    $page += 1
  }
  $out
}

# A repository, or null when it does not exist.
export def get-repo [owner: string, name: string]: nothing -> any {
  let res = (call GET $"/repos/($owner)/($name)" --ok [200 404])
  if $res.status == 404 { null } else { $res.body }
}

# The user the token belongs to.
export def current-user []: nothing -> record {
  (call GET "/user").body
}

# Make sure `owner` exists: the token's user, an existing organization, or a new organization.
export def ensure-owner [owner: string, --dry-run]: nothing -> string {
  let me = (current-user)
  if $me.login == $owner { return "user" }
  let org = (call GET $"/orgs/($owner)" --ok [200 404])
  if $org.status == 200 { return "org" }
  if not $dry_run {
    call POST "/orgs" --body {username: $owner, visibility: "private", description: "GitHub mirrors (raibid-ci)"} | ignore
  }
  "org_created"
}

export def hooks [owner: string, name: string]: nothing -> list<any> {
  get-all $"/repos/($owner)/($name)/hooks"
}

# --- used by bootstrap (admin basic auth) ---------------------------------------------------------------

# Create (or replace) an access token of `user`; returns its value. Needs the user's password.
export def create-token [
  user: string
  name: string
  scopes: list<string>
  basic: record          # {username, password}
]: nothing -> string {
  let existing = (call GET $"/users/($user)/tokens" --basic $basic).body
  if ($existing | any {|t| $t.name == $name }) {
    # Gitea shows a token's value only once: an existing one cannot be reused, so it is replaced.
    call DELETE $"/users/($user)/tokens/($name)" --basic $basic | ignore
  }
  (call POST $"/users/($user)/tokens" --basic $basic --body {name: $name, scopes: $scopes}).body.sha1
}

# Make sure the organization and the (private) repository exist; returns what was created.
export def ensure-repo [
  owner: string
  name: string
  --basic: any = null
  --visibility: string = "private"
]: nothing -> list<string> {
  mut made = []
  if (call GET $"/orgs/($owner)" --ok [200 404] --basic $basic).status == 404 {
    call POST "/orgs" --basic $basic --body {username: $owner, visibility: $visibility, description: "raibid-ci"} | ignore
    $made = ($made | append $"org ($owner)")
  }
  if (call GET $"/repos/($owner)/($name)" --ok [200 404] --basic $basic).status == 404 {
    call POST $"/orgs/($owner)/repos" --basic $basic --body {name: $name, private: true, default_branch: "main", description: "raibid-ci ops repository (Flux syncs from it)"} | ignore
    $made = ($made | append $"repo ($owner)/($name)")
  }
  $made
}

# Does a container image version exist in Gitea's package registry?
export def package-exists [owner: string, name: string, version: string, --basic: any = null]: nothing -> bool {
  (call GET $"/packages/($owner)/container/($name)/($version)" --ok [200 404] --basic $basic).status == 200
}
