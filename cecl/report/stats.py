"""Statistics of the report: mean ± Student-t 95% interval over seeds, and Welch's two-sample comparison.

Every table cell summarises the per-seed values x_1..x_n of one (dataset, method, metric):

    mean  = (1/n) Σ x_i
    s     = sqrt( Σ (x_i - mean)² / (n - 1) )            (sample standard deviation, ddof = 1)
    ci95  = t_{0.975, n-1} · s / √n                        (half-width of the two-sided 95% interval)

With n < 2 there is no s and no interval (std and ci95 are NaN; the cell prints as ``91.2 (n=1)``).

A claim compares two methods a (CECL) and b (a baseline) by the difference of their means
d = mean_a - mean_b, with Welch's unequal-variance interval:

    se = sqrt( s_a²/n_a + s_b²/n_b )
    df = se⁴ / ( (s_a²/n_a)² / (n_a - 1) + (s_b²/n_b)² / (n_b - 1) )     (Welch–Satterthwaite)
    CI = d ± t_{0.975, df} · se

and the two-sided p-value of Welch's t-test, scipy.stats.ttest_ind(a, b, equal_var=False). Both need
n_a, n_b >= 2. When every seed of both methods gave the same value (se = 0) df and p are undefined
(NaN) and the interval collapses to the point d: the difference is then exactly the same in every seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
MISSING = "n/a"

# Verdicts on a difference's direction (the claims' wording).
REPRODUCES = "reproduces"
CONTRADICTS = "contradicts the paper"
UNRESOLVED = "not resolved at this n"


@dataclass(frozen=True)
class Summary:
    """Per-seed values of one cell with their mean, sample std (ddof=1) and 95% CI half-width."""

    values: tuple[float, ...]
    mean: float
    std: float
    ci95: float

    @property
    def n(self) -> int:
        return len(self.values)


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """t_{(1+confidence)/2, df}: the two-sided critical value of Student's t with df degrees of freedom."""
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, df))


def summarize(values: Iterable[float], confidence: float = CONFIDENCE) -> Summary:
    """mean, s (ddof=1) and the half-width t_{0.975,n-1}·s/√n of the Student-t interval (see module doc)."""
    x = np.asarray([float(v) for v in values], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return Summary(tuple(x.tolist()), mean, math.nan, math.nan)
    std = float(x.std(ddof=1))
    return Summary(tuple(x.tolist()), mean, std, t_quantile(n - 1, confidence) * std / math.sqrt(n))


@dataclass(frozen=True)
class Difference:
    """mean_a - mean_b with Welch's interval and test; NaN fields where n < 2 on a side."""

    a: Summary
    b: Summary
    diff: float
    se: float
    df: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def testable(self) -> bool:
        """Both sides have at least two seeds (so an interval and a test exist)."""
        return self.a.n >= 2 and self.b.n >= 2

    @property
    def relative(self) -> float:
        """(mean_a - mean_b) / mean_b as a percentage; NaN when mean_b is 0 or missing."""
        if not self.b.mean or math.isnan(self.b.mean):
            return math.nan
        return 100 * self.diff / self.b.mean


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch–Satterthwaite degrees of freedom from the sample variances s² and sizes (see module doc)."""
    va, vb = var_a / n_a, var_b / n_b
    denominator = va**2 / (n_a - 1) + vb**2 / (n_b - 1)
    return math.nan if denominator == 0 else (va + vb) ** 2 / denominator


def welch(a: Iterable[float], b: Iterable[float], confidence: float = CONFIDENCE) -> Difference:
    """Difference of means a - b with Welch's CI (Welch–Satterthwaite df) and two-sided p-value."""
    sa, sb = summarize(a, confidence), summarize(b, confidence)
    diff = sa.mean - sb.mean
    if sa.n < 2 or sb.n < 2:
        return Difference(sa, sb, diff, math.nan, math.nan, math.nan, math.nan, math.nan)
    var_a, var_b = sa.std**2, sb.std**2
    se = math.sqrt(var_a / sa.n + var_b / sb.n)
    if se == 0:
        return Difference(sa, sb, diff, 0.0, math.nan, diff, diff, math.nan)
    df = welch_df(var_a, sa.n, var_b, sb.n)
    half = t_quantile(df, confidence) * se
    with warnings.catch_warnings():  # scipy warns about "catastrophic cancellation" on a constant side
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(scipy_stats.ttest_ind(sa.values, sb.values, equal_var=False).pvalue)
    return Difference(sa, sb, diff, se, df, diff - half, diff + half, p_value)


def direction(difference: Difference, higher_is_better: bool = True) -> str:
    """REPRODUCES when the CI of a - b lies entirely on a's better side of 0, CONTRADICTS when entirely
    on the other side, UNRESOLVED when it contains 0 or does not exist (n < 2 on a side)."""
    if not difference.testable or math.isnan(difference.ci_low):
        return UNRESOLVED
    low, high = (
        (difference.ci_low, difference.ci_high)
        if higher_is_better
        else (-difference.ci_high, -difference.ci_low)
    )
    if low > 0:
        return REPRODUCES
    if high < 0:
        return CONTRADICTS
    return UNRESOLVED


def format_summary(summary: Summary, scale: float = 100.0, decimals: int = 1, pm: str = "±") -> str:
    """``91.2 ± 0.4 (n=3)``; ``91.2 (n=1)`` without an interval; 'n/a' when nothing was measured.

    ``scale`` multiplies mean and half-width (100: fractions to percent); ``pm`` is the ± sign
    (``$\\pm$`` for LaTeX).
    """
    if summary.n == 0 or math.isnan(summary.mean):
        return MISSING
    mean = f"{scale * summary.mean:.{decimals}f}"
    if summary.n < 2 or math.isnan(summary.ci95):
        return f"{mean} (n={summary.n})"
    return f"{mean} {pm} {scale * summary.ci95:.{decimals}f} (n={summary.n})"


def signed(value: float, decimals: int = 1, unit: str = "") -> str:
    """``+20.0`` / ``-5.0`` with a unit; 'n/a' for NaN."""
    return MISSING if math.isnan(value) else f"{value:+.{decimals}f}{unit}"


def format_p(p_value: float) -> str:
    """A p-value with three decimals ('< 0.001' below that); 'n/a' for NaN."""
    if math.isnan(p_value):
        return MISSING
    return "< 0.001" if p_value < 0.001 else f"{p_value:.3f}"


def p_clause(p_value: float, name: str = "Welch p") -> str:
    """'Welch p = 0.012', 'Welch p < 0.001' or 'Welch p n/a' for a sentence."""
    text = format_p(p_value)
    return f"{name} {text}" if text.startswith("<") or text == MISSING else f"{name} = {text}"


def format_value(value: float) -> str:
    """A per-seed value for the tidy CSV: integers as integers (epochs), other floats at full precision."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
