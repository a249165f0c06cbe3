"""Statistics of the report: mean ± Student-t 95% interval over seeds, paired comparisons with Holm's
adjustment and an equivalence test, and Welch's two-sample comparison (kept for `make compare`).

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

The claims use the paired design instead: at each seed every method starts from the same initial
weights and sees the same batch order, so the seed is a block. With d_i = a_i - b_i over the n seeds
both sides measured (a constant b, such as the raw-pixel floor, gives a one-sample comparison):

    d̄ = mean d_i,  s_d = sd(d_i, ddof=1),  se = s_d / √n,  df = n - 1
    CI = d̄ ± t_{0.975, n-1} · se;  p = two-sided paired t-test (scipy.stats.ttest_rel)
    TOST at margin m: p_eq = max(P(T_{n-1} >= (d̄ + m)/se), P(T_{n-1} <= (d̄ - m)/se))

and Holm's step-down adjustment within each claim (holm()). A comparison whose d_i are all equal
(s_d = 0) has no interval and no test: it is *degenerate*, and is printed as such, never as a
zero-width interval. Rank tests are not used: the Wilcoxon signed-rank test's smallest two-sided
p-value with n pairs is 2 / 2^n, so it cannot reach 0.05 below 6 pairs (rank_test_note()).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
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


# -- paired comparisons (the claims) ------------------------------------------------------------------

EQUIVALENT = "equivalent"  # verdict key; the wording names the margin
DEGENERATE = "degenerate"
ALPHA = 0.05


@dataclass(frozen=True)
class Paired:
    """a - b paired by seed: per-seed differences with their t interval, t-test and TOST p-values."""

    seeds: tuple[int, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]
    diff: float  # mean of the per-seed differences
    sd: float  # their sample standard deviation (ddof 1)
    ci_low: float
    ci_high: float
    p_value: float  # two-sided paired t-test
    p_equivalence: float  # TOST at ±margin (the larger of the two one-sided p-values)
    margin: float

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def testable(self) -> bool:
        """At least two pairs whose differences vary (else no interval, no test)."""
        return self.n >= 2 and self.sd > 0

    @property
    def degenerate(self) -> bool:
        """Two or more pairs with the same difference in every seed: a zero-width interval, no test."""
        return self.n >= 2 and self.sd == 0


def paired(
    a: dict[int, float], b: dict[int, float] | float, margin: float, confidence: float = CONFIDENCE
) -> Paired:
    """a - b over the seeds both have (b a constant: a one-sample comparison with it); see module doc.

    ``a`` and ``b`` map seed -> value; ``margin`` is the equivalence margin in the values' unit.
    """
    seeds = tuple(sorted(s for s in a if not isinstance(b, dict) or s in b))
    x = np.asarray([a[s] for s in seeds], dtype=float)
    y = np.asarray([b[s] if isinstance(b, dict) else float(b) for s in seeds], dtype=float)
    d = x - y
    n = len(d)
    nan = math.nan
    if n == 0:
        return Paired(seeds, (), (), nan, nan, nan, nan, nan, nan, margin)
    diff = float(d.mean())
    sd = float(d.std(ddof=1)) if n >= 2 else nan
    # A difference equal in every seed up to round-off (1e-12 of its size) has no spread.
    if n >= 2 and sd <= 1e-12 * max(1.0, abs(diff)):
        sd = 0.0
    if n < 2 or sd == 0:
        return Paired(seeds, tuple(x), tuple(y), diff, sd, nan, nan, nan, nan, margin)
    se = sd / math.sqrt(n)
    half = t_quantile(n - 1, confidence) * se
    p_value = float(scipy_stats.ttest_rel(x, y).pvalue)
    t_dist = scipy_stats.t(n - 1)
    p_equivalence = max(float(t_dist.sf((diff + margin) / se)), float(t_dist.cdf((diff - margin) / se)))
    return Paired(
        seeds, tuple(x), tuple(y), diff, sd, diff - half, diff + half, p_value, p_equivalence, margin
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted in the family).

    Written here rather than taken from statsmodels (multipletests(method="holm")), which the project
    does not otherwise need: sort the m valid p ascending, adjusted_(k) = max_{j<=k} min(1, (m-j+1) p_(j)).
    """
    valid = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    m = len(valid)
    for rank, (p, index) in enumerate(sorted(valid)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def verdict(
    comparison: Paired, p_adjusted: float, p_equivalence_adjusted: float, higher_is_better: bool = True
) -> str:
    """EQUIVALENT when the Holm-adjusted TOST p < ALPHA (the whole difference lies within the margin,
    even if it is also different from 0: too small to matter); else REPRODUCES / CONTRADICTS when the
    Holm-adjusted paired p < ALPHA (by the sign of the mean difference); DEGENERATE when the difference
    is the same in every seed; else UNRESOLVED."""
    if comparison.degenerate:
        return DEGENERATE
    if not comparison.testable:
        return UNRESOLVED
    if p_equivalence_adjusted < ALPHA:
        return EQUIVALENT
    if p_adjusted < ALPHA:
        better = comparison.diff > 0 if higher_is_better else comparison.diff < 0
        return REPRODUCES if better else CONTRADICTS
    return UNRESOLVED


def smallest_signed_rank_p(n: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with n pairs: 2/2^n."""
    return min(1.0, 2.0 / 2**n)


def rank_test_note(n: int) -> str:
    """A plain sentence when n pairs are too few for any rank test to reach ALPHA; '' otherwise."""
    if n <= 0 or smallest_signed_rank_p(n) < ALPHA:
        return ""
    return (
        f"With {n} paired seed(s) no rank test can reject at {ALPHA:g} (the Wilcoxon signed-rank test's "
        f"smallest two-sided p is 2/2^{n} = {smallest_signed_rank_p(n):.3g}; 6 pairs are needed), so only "
        "the t-based intervals are reported."
    )


def format_interval(low: float, high: float, scale: float = 100.0, decimals: int = 1, most: int = 4) -> str:
    """``+9.0 to +30.8``; more decimals (up to ``most``) until the printed ends differ and no non-zero
    end prints as zero ('-0.0'); 'n/a' for NaN.

    A real interval never prints as a zero-width one ('+0.0 to +0.0'): its ends differ at some precision.
    """
    if math.isnan(low) or math.isnan(high):
        return MISSING
    text_low = text_high = ""
    for places in range(decimals, most + 1):
        text_low, text_high = signed(scale * low, places), signed(scale * high, places)
        zero = f"{0:.{places}f}"
        hides_sign = any(v != 0 and t[1:] == zero for v, t in ((low, text_low), (high, text_high)))
        if text_low != text_high and not hides_sign:
            return f"{text_low} to {text_high}"
    if text_low != text_high:
        return f"{text_low} to {text_high}"
    raise ValueError(f"interval {low} to {high} is narrower than {most} decimals: a degenerate interval")
