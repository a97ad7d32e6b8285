# scripts/pins.env as a Nix attribute set: the one place tool versions are pinned, read by flake.nix.
# Same grammar as the POSIX shell reads it: KEY=value lines, `#` comments and blank lines ignored.
# tests/gitops checks that this evaluates to exactly what the shell and Python see.
{ pinsFile ? ../scripts/pins.env }:
let
  lines = builtins.filter builtins.isString (builtins.split "\n" (builtins.readFile pinsFile));
  parse = line: builtins.match "([A-Z][A-Z0-9_]*)=([^[:space:]#]+)[[:space:]]*" line;
  pairs = builtins.filter (m: m != null) (map parse lines);
in
builtins.listToAttrs (map (m: { name = builtins.elemAt m 0; value = builtins.elemAt m 1; }) pairs)
