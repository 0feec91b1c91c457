"""The DuckDB catalog: connections and locks, its schema and migrations, the library view with
its ids, and the splits decided once."""
