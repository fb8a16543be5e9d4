"""Built-in sample data.

The sample codebook is **synthetic**: no tokenizer weights are shipped. It imitates the
geometry of LlamaGen's VQ codebook (16,384 codes of dimension 8, L2-normalised) with a
strongly varying density: a few hundred anisotropic clumps of very different widths and
populations on the unit sphere, plus a sparse uniform background. It is stored in the
package (``dcpe/data/sample_codebook.npy``) so that every machine and NumPy version sees
the same bytes; :func:`make_sample_codebook` is the generator it was written with.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

SAMPLE_SHAPE = (16384, 8)
SAMPLE_SEED = 20240607


def make_sample_codebook(n: int = SAMPLE_SHAPE[0], d: int = SAMPLE_SHAPE[1],
                         seed: int = SAMPLE_SEED) -> np.ndarray:
    """Generate a synthetic L2-normalised codebook with strongly varying density.

    Parameters
    ----------
    n, d : int
        Number of codes and their dimension.
    seed : int
        Seed of the NumPy ``PCG64`` generator.

    Returns
    -------
    numpy.ndarray
        ``(n, d)`` float32, each row of unit L2 norm.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    n_clumps = max(1, n // 64)
    centers = rng.standard_normal((n_clumps, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    # Zipf-like populations and log-normal widths: dense cores and sparse tails.
    weights = 1.0 / np.arange(1, n_clumps + 1) ** 0.9
    weights = rng.permutation(weights / weights.sum())
    widths = np.exp(rng.normal(np.log(0.08), 0.8, size=n_clumps))
    n_background = n // 16
    counts = rng.multinomial(n - n_background, weights)
    parts = []
    for center, width, count in zip(centers, widths, counts):
        if count == 0:
            continue
        axes = rng.standard_normal((d, d)) * rng.uniform(0.3, 1.0, size=d)
        parts.append(center + width * rng.standard_normal((count, d)) @ axes / np.sqrt(d))
    parts.append(rng.standard_normal((n_background, d)))
    x = np.concatenate(parts, axis=0)[rng.permutation(n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def sample_codebook() -> np.ndarray:
    """Return the built-in synthetic sample codebook.

    Returns
    -------
    numpy.ndarray
        ``(16384, 8)`` float32, L2-normalised rows (a fresh, writable copy).

    Examples
    --------
    >>> import dcpe
    >>> x = dcpe.datasets.sample_codebook()
    >>> x.shape, x.dtype
    ((16384, 8), dtype('float32'))
    """
    ref = resources.files("dcpe") / "data" / "sample_codebook.npy"
    with resources.as_file(ref) as path:
        return np.load(path).copy()
