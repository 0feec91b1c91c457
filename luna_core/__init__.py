"""Luna's domain in plain Python: parsing, hashing, stores, catalog. Never imports Dagster."""

__version__ = "0.1.0"
