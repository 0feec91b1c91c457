"""Model profiles, the tiny local profile, and the vision and SDXL text encoders."""
