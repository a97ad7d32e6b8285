# A small Gitea API client (paths as in Gitea 1.22's swagger, /api/v1 prefixed). URL from RAIBID_GITEA_URL,
# token from RAIBID_GITEA_TOKEN (or its _FILE / config copy), sent as `Authorization: token …`.

use errors.nu [fail]
use http.nu [request parse-link-header]
use secrets.nu [secret]

# Base URL of Gitea's API.
export def api-base []: nothing -> string {
  $"($env.RAIBID_GITEA_URL | str trim --right --char '/')/api/v1"
}

def auth-headers [basic: any, sudo: any]: nothing -> record {
  let auth = if $basic != null {
    {Authorization: $"Basic ($'($basic.username):($basic.password)' | encode base64)"}
  } else {
    {Authorization: $"token (secret RAIBID_GITEA_TOKEN --purpose 'the Gitea API')"}
  }
  # Gitea's `Sudo` header (swagger securityDefinitions.SudoHeader): an admin acts as that user.
  if $sudo == null { $auth } else { $auth | insert Sudo $sudo }
}

# Call Gitea. Returns {status, headers, body}; 401/403/5xx and unexpected statuses raise errors.
export def call [
  method: string           # HTTP method
  path: string             # API path below /api/v1, e.g. /repos/o/r
  --body: any = null       # JSON body
  --ok: list<int> = [200 201 204]  # statuses returned as results (e.g. add 404 to test existence)
  --basic: any = null      # {username, password}: basic auth instead of the token (bootstrap creates tokens)
  --sudo: any = null       # act as this user (the caller must be a site admin)
]: nothing -> record {
  let url = $"(api-base)($path)"
  let res = (request $method $url --headers ({Accept: "application/json"} | merge (auth-headers $basic $sudo)) --body $body
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
export def get-all [path: string, --limit: int = 50, --basic: any = null]: nothing -> list<any> {
  mut page = 1
  mut out = []
  let sep = if ($path | str contains "?") { "&" } else { "?" }
  loop {
    let res = (call GET $"($path)($sep)page=($page)&limit=($limit)" --basic $basic)
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

# Create (or replace) an access token of `user`; returns its value. Token endpoints need basic auth: `basic` is
# the user's own, or a site admin's, who then acts as `user` through the `Sudo` header. Without it Gitea's answer
# depends on the version: 1.20 created the token for the *caller* (go-gitea/gitea#26234) and DELETE removes only
# the caller's tokens, so a token of another user is never made or replaced with the admin as the caller.
export def create-token [
  user: string
  name: string
  scopes: list<string>
  basic: record          # {username, password}: `user`'s, or a site admin's
]: nothing -> string {
  let sudo = if $basic.username == $user { null } else { $user }
  if (token-exists $user $name $basic) {
    # Gitea shows a token's value only once: an existing one cannot be reused, so it is replaced.
    call DELETE $"/users/($user)/tokens/($name)" --basic $basic --sudo $sudo | ignore
  }
  (call POST $"/users/($user)/tokens" --basic $basic --sudo $sudo --body {name: $name, scopes: $scopes}).body.sha1
}

# Does `user` have a token called `name`? (basic as in create-token)
export def token-exists [user: string, name: string, basic: record]: nothing -> bool {
  let sudo = if $basic.username == $user { null } else { $user }
  (get-all-tokens $user $basic $sudo) | any {|t| $t.name == $name }
}

def get-all-tokens [user: string, basic: record, sudo: any]: nothing -> list<any> {
  (call GET $"/users/($user)/tokens" --basic $basic --sudo $sudo).body
}

# Remove `user`'s token `name` if it exists; true when one was removed.
export def delete-token [user: string, name: string, basic: record]: nothing -> bool {
  if not (token-exists $user $name $basic) { return false }
  let sudo = if $basic.username == $user { null } else { $user }
  call DELETE $"/users/($user)/tokens/($name)" --basic $basic --sudo $sudo | ignore
  true
}

# The team a push user gets in an organisation that publishes images (ADR 0012): package write, nothing else.
export def packages-team [name: string]: nothing -> record {
  {name: $name, description: "raibid-ci image pushes: package write only (ADR 0012)", permission: "write",
    includes_all_repositories: false, can_create_org_repo: false, units_map: {"repo.packages": "write"}}
}

# Does an existing team (Gitea's Team) grant what packages-team asks and nothing more?
export def team-is-packages-only [team: record]: nothing -> bool {
  let units = ($team.units_map? | default {})
  let others = ($units | transpose k v | where {|u| $u.k != "repo.packages" and $u.v != "none" })
  (($units | get -o "repo.packages") == "write" and ($others | is-empty)
    and not ($team.includes_all_repositories? | default false) and not ($team.can_create_org_repo? | default false)
    and ($team.permission? | default "write") not-in [admin owner])
}

# The dedicated image push user (ADR 0012), made as the site admin `basic`: it exists (created with a random
# password that is never kept: its token is made through Sudo), is no site admin, is a member of none of the
# `reserved` organisations, and is in a team `team` (packages-team) of each organisation in `orgs`, created when
# missing (never a user's namespace: only the user itself may write there). Returns what it changed.
export def ensure-push-user [
  user: string
  email: string
  orgs: list<string>      # organisations whose repositories publish images
  reserved: list<string>  # organisations it must not belong to (raibid's own images)
  team: string            # the team's name in each of `orgs`
  basic: record           # a site admin's {username, password}
]: nothing -> list<string> {
  let bad = ($orgs | where {|o| ($o | str lowercase) in ($reserved | str lowercase) })
  if ($bad | is-not-empty) {
    fail push_org_reserved $"($bad | str join ', ') cannot publish images: reserved for raibid's own images" --hint "remove it from RAIBID_IMAGE_PUBLISH_ORGS (clusters/dgx-spark/cluster-settings.yaml)"
  }
  mut made = []
  let u = (call GET $"/users/($user)" --ok [200 404] --basic $basic)
  if $u.status == 404 {
    call POST "/admin/users" --basic $basic --body {
      username: $user, email: $email, password: (random chars --length 40), must_change_password: false, visibility: "private"
    } | ignore
    $made = ($made | append $"user ($user)")
  } else if ($u.body.is_admin? | default false) {
    call PATCH $"/admin/users/($user)" --basic $basic --body {admin: false} | ignore
    $made = ($made | append $"($user) is no longer a site admin")
  }
  for o in $reserved {
    if (call GET $"/orgs/($o)/members/($user)" --ok [204 404] --basic $basic).status == 204 {
      call DELETE $"/orgs/($o)/members/($user)" --basic $basic | ignore
      $made = ($made | append $"($user) removed from ($o)")
    }
  }
  let want = (packages-team $team)
  for o in $orgs {
    if (call GET $"/orgs/($o)" --ok [200 404] --basic $basic).status == 404 {
      if (call GET $"/users/($o)" --ok [200 404] --basic $basic).status == 200 {
        fail push_org_is_user $"($o) is a Gitea user, not an organisation: only ($o) itself could push there" --hint "move its repositories to an organisation (ADR 0012), or remove it from RAIBID_IMAGE_PUBLISH_ORGS"
      }
      call POST "/orgs" --basic $basic --body {username: $o, visibility: "private", description: "raibid-ci"} | ignore
      $made = ($made | append $"org ($o)")
    }
    let existing = (get-all $"/orgs/($o)/teams" --basic $basic | where name == $team | get -o 0)
    let id = if $existing == null {
      $made = ($made | append $"team ($o)/($team)")
      (call POST $"/orgs/($o)/teams" --basic $basic --body $want).body.id
    } else if not (team-is-packages-only $existing) {
      $made = ($made | append $"team ($o)/($team) reset to package write only")
      (call PATCH $"/teams/($existing.id)" --basic $basic --body $want).body.id
    } else { $existing.id }
    if (call GET $"/teams/($id)/members/($user)" --ok [200 404] --basic $basic).status == 404 {
      call PUT $"/teams/($id)/members/($user)" --basic $basic | ignore
      $made = ($made | append $"($user) in ($o)/($team)")
    }
  }
  $made
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
