"""The `reports` domain (group `reports`): the refinement report (cheap, follows the index and the
champion) and the refinement benchmark (expensive, weekly and on demand)."""
