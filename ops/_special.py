"""Special functions NumPy lacks, compiled with Numba from libm (correctly rounded to double)."""

import math

import numba


@numba.vectorize(["float64(float64)"], cache=True)
def erf(x):
    return math.erf(x)
