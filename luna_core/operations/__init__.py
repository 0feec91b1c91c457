"""Running a home: `luna doctor`'s checks and repairs, the home's Dagster instance file, and the
MLflow tracking server's set-up."""
