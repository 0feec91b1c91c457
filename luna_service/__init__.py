"""`luna serve`: Luna's query service (FastAPI on uvicorn), for tools that ask per crop in
milliseconds."""
