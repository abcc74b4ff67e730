"""Band screening: the per-band weights of the band penalty (adaptive group lasso)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.dataset import EncodedRaster, encoded_pixels
from core.encoding import fit_encoder
from core.screening import g_statistic, penalty_weights


def _sample(seed: int = 0, n_pos: int = 60, n_bg: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Encoded-like (C, n) samples: 0 noise, 1 monotone signal, 2 deposits at middling values,
    3..5 one-hot codes enriched in code 0 at the deposits, 6..8 one-hot codes without signal."""
    rng = np.random.default_rng(seed)

    def draw(n: int, positive: bool) -> np.ndarray:
        x = rng.normal(size=(9, n))
        if positive:
            x[1] += 1.5
            x[2] = rng.normal(0, 0.2, n)  # middling values only: no mean shift, no monotone trend
        codes = rng.choice(3, size=n, p=[0.7, 0.2, 0.1] if positive else [0.2, 0.4, 0.4])
        x[3:6] = np.eye(3)[codes].T
        x[6:9] = np.eye(3)[rng.choice(3, size=n, p=[0.2, 0.4, 0.4])].T
        return x.astype(np.float32)

    return draw(n_pos, True), draw(n_bg, False)


def test_bands_with_evidence_bear_less_of_the_penalty_and_noise_bears_all_of_it() -> None:
    pos, bg = _sample()
    w = penalty_weights(pos, bg, [[0], [1], [2], [3, 4, 5], [6, 7, 8]])
    assert w[0] == 1.0 and w[4] == 1.0  # noise: no evidence at the 99 % level
    assert w[1] < 0.2 and w[3] < 0.2  # a strong shift, a strongly enriched code
    assert w[2] < 0.5  # a non-monotone relation is found too (deciles, not a mean test)
    assert all(0.0 < v <= 1.0 for v in w)


def test_noise_bands_keep_the_full_penalty_at_about_the_test_level() -> None:
    """Of 200 pure-noise bands, about 1 % may show chance evidence; never most of them."""
    rng = np.random.default_rng(1)
    pos, bg = rng.normal(size=(200, 50)), rng.normal(size=(200, 20000))
    w = np.array(penalty_weights(pos, bg, [[i] for i in range(200)]))
    assert (w == 1.0).mean() >= 0.95


def test_g_statistic_is_zero_when_deposits_follow_the_background() -> None:
    bg = np.repeat(np.arange(4), 250)
    g, df = g_statistic(np.repeat(np.arange(4), 10), bg, 4)
    assert g == pytest.approx(0.0, abs=1e-12) and df == 3
    g, _ = g_statistic(np.zeros(40, dtype=int), bg, 4)  # every deposit in one class of four
    assert g == pytest.approx(2 * 40 * np.log(4))


def test_no_deposit_leaves_every_band_at_the_full_penalty() -> None:
    _, bg = _sample()
    assert penalty_weights(np.zeros((9, 0), np.float32), bg, [[0], [3, 4, 5]]) == [1.0, 1.0]


def test_pixels_read_in_chunks_equal_the_in_memory_raster(tiny_stack, tmp_path: Path) -> None:
    """The large-raster path (chunked reads) gives the same encoded values as the in-memory one."""
    h, w = tiny_stack.height, tiny_stack.width
    enc = fit_encoder(tiny_stack.path, [(0, 0, h, w)], [5])
    flat = np.random.default_rng(0).choice(h * w, 500, replace=False)
    memory = EncodedRaster(str(tiny_stack.path), enc)
    x_mem, ok_mem = encoded_pixels(str(tiny_stack.path), enc, flat, memory)
    x_read, ok_read = encoded_pixels(str(tiny_stack.path), enc, flat)
    assert np.array_equal(ok_mem, ok_read) and not ok_read.all()  # the nodata corner is found
    np.testing.assert_allclose(x_read[:, ok_read], x_mem[:, ok_mem], rtol=1e-6)
