"""Local deployments: the TOML config, the `specmemo` CLI."""

if __name__ != "specmemo.deploy":  # a second copy of these modules breaks isinstance and except clauses
    raise ImportError(f"import specmemo.deploy, not {__name__}: these folders install as specmemo.*")
