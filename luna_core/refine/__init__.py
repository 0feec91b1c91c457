"""Refinement with true batching: the chess refiner and the semantic detailer, every tile and crop
conditioned by its own vault or projector answer, one sampler call per pass."""
