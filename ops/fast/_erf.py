"""erf(x / sqrt 2) rounded to float32, bit for bit as the reference's libm `erf` in double, ~6x faster.

The reference GELU_ERF (exact numerics) computes `float32(erf(double(x) * 0.7071...))` with libm's double erf, a
scalar call of ~15 ns. Here a branch-free polynomial (unrolled so that LLVM vectorises the loop over a row) gives
erf in double to 4e-13 relative; its float32 rounding is kept only when
`y * (1 - 1e-10)` and `y * (1 + 1e-10)` round to the same float32, i.e. when no rounding boundary lies within 1e-10
of it: then the libm value (closer still to the true erf) rounds the same way. The ~0.3 % of elements near a
boundary are recomputed with libm `erf`. |z| >= 4 gives +-1 exactly (1 - erf(4) = 1.5e-8 is below half a float32
ulp of 1).

Coefficients: `numpy.polynomial.chebyshev.chebfit` of g(z) = erf(z)/z against `math.erf` at 88 Chebyshev
points of t = z*z/8 - 1 on z in (0, 4), degree 22 (g is even and entire, so a series in z*z converges fast and
keeps the relative accuracy near 0: erf = z * g). Largest relative error of z * g against `math.erf` on 400001
points of (0, 4]: 4.0e-13 (degree 21: 2.5e-12, 20: 1.5e-11; 26 would give 3e-15 at 1.2x the cost). The series
is evaluated in powers of t (`numpy.polynomial.chebyshev.cheb2poly`; the magnitudes of those coefficients sum
to 1.13, so nothing cancels and the error stays 4.0e-13) as two Horner chains in t*t, even and odd powers: the
Clenshaw recurrence was one dependency chain of 44 operations per element, and latency-bound.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from npggml.ops.fast._common import F32, F64, helper, kernel, row_of, serial

INV_SQRT2 = F64(0.70710678118654752440)
MARGIN_LO, MARGIN_HI = F64(1.0 - 1e-10), F64(1.0 + 1e-10)


# fma contraction only (no reassociation): each chain step becomes one fma; the result moves by ~1e-16 relative,
# far inside the 1e-10 margin below
@numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def gelu_erf_row(x, y, flag):
    """y[i] = 0.5 x (1 + float32(erf(x[i] / sqrt 2))) where that erf is certain; elsewhere flag[i] = 1 and y[i]
    keeps x[i] for `_fix`."""
    for i in range(x.shape[0]):
        z = F64(x[i]) * INV_SQRT2
        a = abs(z)
        ac = a if a < 4.0 else 4.0
        t = ac * ac * 0.125 - 1.0
        s = t * t
        ev = 1.5260360081938482e-06
        ev = 4.8623569649917235e-06 + s * ev
        ev = 5.1008088118942085e-05 + s * ev
        ev = 0.00027242795606532467 + s * ev
        ev = 0.0012946183261827798 + s * ev
        ev = 0.004852693639444433 + s * ev
        ev = 0.014349839280913665 + s * ev
        ev = 0.0330605900957818 + s * ev
        ev = 0.05988690942513583 + s * ev
        ev = 0.09020899387283435 + s * ev
        ev = 0.13167511689974434 + s * ev
        ev = 0.35353099564338714 + s * ev
        od = -4.589326662301696e-06
        od = -1.2620172801470957e-05 + s * od
        od = -0.0001265281023767499 + s * od
        od = -0.0006048206228258558 + s * od
        od = -0.0025830617447936844 + s * od
        od = -0.008604344019953424 + s * od
        od = -0.02247403425873873 + s * od
        od = -0.045765039968226146 + s * od
        od = -0.07472787165427652 + s * od
        od = -0.1077104423001659 + s * od
        od = -0.1765762333039752 + s * od
        g = ev + t * od

        w = z * g
        lo = F32(w * MARGIN_LO)
        hi = F32(w * MARGIN_HI)
        big = a >= 4.0
        one = F32(1.0) if z > 0 else F32(-1.0)
        unsure = not big and lo != hi
        xi = x[i]
        gelu = F32(0.5) * xi * (F32(1.0) + (one if big else lo))  # no a*b + c: nothing to contract
        y[i] = xi if unsure else gelu
        flag[i] = np.uint8(unsure)


@helper
def _fix_one(y, i):
    xi = y[i]
    y[i] = F32(0.5) * xi * (F32(1.0) + F32(math.erf(F64(xi) * INV_SQRT2)))


@serial
def _fix(y, flag):
    """The flagged elements (y still holds their x) with libm's erf. The flags are scanned eight at a time (one
    uint64 word; ~0.2 % are set): a byte loop with a branch each cost ~1 ns per element, a third of the kernel."""
    n8 = y.shape[0] // 8 * 8
    words = flag[:n8].view(np.uint64)
    for w in range(words.shape[0]):
        if words[w]:
            for i in range(8 * w, 8 * w + 8):
                if flag[i]:
                    _fix_one(y, i)
    for i in range(n8, y.shape[0]):
        if flag[i]:
            _fix_one(y, i)


@kernel
def gelu_erf_exact(x, y, bias):
    """y = 0.5 x (1 + erf(x / sqrt 2)) for 4-D float32 x, rows in parallel (y may be x); with a non-empty bias
    row, of x + bias (each sum rounded to float, as an add node would)."""
    n3, n2, n1, n0 = x.shape
    for r in numba.prange(n3 * n2 * n1):
        i3, i2, i1 = row_of(r, n2, n1)
        flag = np.empty(n0, np.uint8)
        xr = x[i3, i2, i1]
        yr = y[i3, i2, i1]
        if bias.shape[0] > 0:
            xb = np.empty(n0, F32)
            for i in range(n0):
                xb[i] = xr[i] + bias[i]
            gelu_erf_row(xb, yr, flag)
        elif xr.ctypes.data == yr.ctypes.data:  # in place, LLVM's alias check takes the scalar loop (3x slower)
            gelu_erf_row(xr.copy(), yr, flag)
        else:
            gelu_erf_row(xr, yr, flag)
        _fix(yr, flag)
