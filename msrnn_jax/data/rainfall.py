"""HKO-7 radar units: pixel <-> dBZ <-> rain rate (mm/h).

HKO-7 stores reflectivity as grey levels; with pixel values p in [0, 1],
dBZ = 70 p - 10, and rain rate R follows the Marshall-Palmer-type Z-R law
Z = a R^b with a = 58.53, b = 1.56 used by the HKO-7 benchmark, i.e.
dBZ = 10 log10(a) + 10 b log10(R).

All functions work on numpy or jax arrays (they only use array methods and
``numpy``-compatible ufuncs passed through ``xp``).
"""

from typing import Any

import numpy as np

ZR_A = 58.53
ZR_B = 1.56
# Rain-rate thresholds (mm/h) for POD/FAR/CSI/HSS, as in the reference.
THRESHOLDS = (0.5, 2.0, 5.0, 10.0, 30.0)
# B-MSE/B-MAE weights for truth rain in [<0.5, 0.5-2, 2-5, 5-10, 10-30, >=30].
BALANCING_WEIGHTS = (1.0, 1.0, 2.0, 5.0, 10.0, 30.0)


def pixel_to_dbz(pixel: Any) -> Any:
  """Maps pixel values in [0, 1] to reflectivity in dBZ."""
  return pixel * 70.0 - 10.0


def dbz_to_pixel(dbz: Any) -> Any:
  """Inverse of :func:`pixel_to_dbz`."""
  return (dbz + 10.0) / 70.0


def dbz_to_rainfall(dbz: Any, a: float = ZR_A, b: float = ZR_B) -> Any:
  """Rain rate in mm/h from dBZ with Z = a R^b."""
  return np.power(10.0, (dbz - 10.0 * np.log10(a)) / (10.0 * b))


def rainfall_to_dbz(rain: Any, a: float = ZR_A, b: float = ZR_B) -> Any:
  """dBZ from a rain rate in mm/h with Z = a R^b."""
  return 10.0 * np.log10(a) + 10.0 * b * np.log10(rain)


def pixel_to_rainfall(pixel: Any, a: float = ZR_A, b: float = ZR_B) -> Any:
  """Rain rate in mm/h from pixel values in [0, 1]."""
  return dbz_to_rainfall(pixel_to_dbz(pixel), a, b)


def rainfall_to_pixel(rain: Any, a: float = ZR_A, b: float = ZR_B) -> Any:
  """Pixel value in [0, 1] of a rain rate in mm/h (thresholds in pixel space)."""
  return dbz_to_pixel(rainfall_to_dbz(rain, a, b))
