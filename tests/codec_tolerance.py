"""How close two conditionings coded apart are: each store keeps every token within cosine error
9e-4 of its value (pca-zstd, luna_core.vault.basis_codec), so two stores fitted apart may differ by
twice the angle: cosine 0.996."""

from __future__ import annotations

import numpy as np

TWO_CODINGS = 0.996


def token_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def assert_coded_alike(a: np.ndarray, b: np.ndarray) -> None:
    """Same shape, every token within the two codings' bound."""
    assert np.shape(a) == np.shape(b)
    worst = token_cosines(a, b).min()
    assert worst >= TWO_CODINGS, f"a token at cosine {worst:.5f} (bound {TWO_CODINGS})"
