"""The `catalog` domain (group `catalog`)."""
