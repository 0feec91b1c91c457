"""The `ingest` domain (group `ingest`): every file under the library roots, in the DuckDB catalog,
the job that scans them and the sensor that notices when they change."""
