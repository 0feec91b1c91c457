"""The `refine` domain: refining is an action, not an asset (job `refine_images`)."""
