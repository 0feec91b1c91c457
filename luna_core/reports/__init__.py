"""The refinement benchmark report: every conditioning source compared on the test split."""
