"""The `projector` domain (group `projector`): image embedding → SDXL conditioning networks,
versioned in MLflow, and the retrain policy's sensor."""
