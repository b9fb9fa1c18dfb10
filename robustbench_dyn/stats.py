"""Small statistics shared by the report and the library API (no plotting imports)."""

from __future__ import annotations

import math


def wilson(k: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval for k successes out of n (nan, nan for n = 0)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))
