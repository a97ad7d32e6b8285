{
  # `nix develop`: every tool raibid-ci is built, tested and operated with.
  # Versions come from scripts/pins.env (via nix/pins.nix), the file dev.sh, bootstrap and the tests read:
  # - Rust exactly (rust-overlay builds any released toolchain);
  # - Nushell exactly: the shell puts dev.sh's project-local Nushell (.tools/bin, NUSHELL_VERSION) first
  #   on PATH and installs it on entry if missing; nixpkgs' nushell is only the fallback;
  # - the rest from the locked nixpkgs, with a warning when its version differs from the pin.
  description = "raibid-ci: CI agent pool for the DGX Spark (dev shell)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, rust-overlay }:
    let
      pins = import ./nix/pins.nix { pinsFile = ./scripts/pins.env; };
      systems = [ "aarch64-linux" "x86_64-linux" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system);
    in
    {
      devShells = forAllSystems (system:
        let
          pkgs = import nixpkgs {
            inherit system;
            overlays = [ rust-overlay.overlays.default ];
          };
          lib = pkgs.lib;
          # Warn (the shell still opens) when nixpkgs' version of a tool is not the pinned one.
          pinned = name: pkg: want:
            lib.warnIf (!(lib.hasPrefix want pkg.version))
              "flake.nix: nixpkgs has ${name} ${pkg.version}, scripts/pins.env pins ${want}"
              pkg;
          rust = pkgs.rust-bin.stable.${pins.RUST_VERSION}.default.override {
            extensions = [ "rust-src" "clippy" "rustfmt" ];
          };
        in
        {
          default = pkgs.mkShell {
            packages = [
              rust
              pkgs.nodejs # dev.sh installs the pinned Nushell from its npm package
              (pinned "nushell" pkgs.nushell pins.NUSHELL_VERSION)
              (pinned "kubectl" pkgs.kubectl (lib.versions.majorMinor pins.KUBERNETES_VERSION))
              (pinned "kustomize" pkgs.kustomize pins.KUSTOMIZE_VERSION)
              (pinned "flux" pkgs.fluxcd pins.FLUX_VERSION)
              (pinned "helm" pkgs.kubernetes-helm pins.HELM_VERSION)
              (pinned "sops" pkgs.sops pins.SOPS_VERSION)
              (pinned "age" pkgs.age pins.AGE_VERSION)
              pkgs.redis
              pkgs.buildah
              pkgs.bubblewrap
              pkgs.skopeo
              pkgs.git
              pkgs.python3 # tests/gitops (its own venv: tests/gitops/requirements.txt)
            ];
            RAIBID_PINNED_K3S = pins.K3S_VERSION;
            shellHook = ''
              export PATH="$PWD/.tools/bin:$PATH"
              if [ "$(nu --version 2>/dev/null)" != "${pins.NUSHELL_VERSION}" ]; then
                ./scripts/dev.sh help >/dev/null 2>&1 || echo "flake.nix: run ./scripts/dev.sh to install Nushell ${pins.NUSHELL_VERSION}" >&2
              fi
            '';
          };
        });
    };
}
