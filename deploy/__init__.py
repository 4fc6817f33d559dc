"""Local deployments: the TOML config, the `specmemo` CLI."""
