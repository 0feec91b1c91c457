"""The Luna code location: `definitions.defs`, loaded by workspace.yaml and `[tool.dagster]`."""
