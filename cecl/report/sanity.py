"""Paper-scale sanity rows: does vanilla cross-entropy land where the field's BiasedMNIST runs land?

At rho .999 / .997 / .995 / .990 vanilla cross-entropy (its own head) reads 10.4 / 33.4 / 72.1 / 89.1%
unbiased in ReBias's Table 1 (Bahng et al. 2020) and 10.2 / 48.6 / 73.0 / 88.1% in an independent rerun
of the ReBias code (cited in issue 31); PUBLISHED_BANDS spans both, with a little room. A run far
outside its band is not the benchmark the paper's numbers come from, whatever the methods do.

The band is only a yardstick for the published recipe's scale: all of MNIST (ReBias trains on 60 000
images, BiasCon on 54 000 after holding out 10% for validation). An entry is *paper scale* when it
trains on at least PAPER_SCALE_MIN_TRAIN images; a smaller one at those rhos gets the line "not
comparable: CPU scale" instead of a verdict. Entries at other rhos get no row (no published band).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# rho -> (low, high) unbiased accuracy (%) of vanilla cross-entropy's own head in published runs.
PUBLISHED_BANDS = {0.999: (9.0, 12.0), 0.997: (30.0, 50.0), 0.995: (70.0, 76.0), 0.99: (87.0, 90.0)}
PAPER_SCALE_MIN_TRAIN = 50_000
RHO_TOLERANCE = 1e-9


@dataclass(frozen=True)
class EntryScale:
    """What the sanity rows need to know about a dataset entry: its training rho and training images."""

    rho: float | None
    train_images: int


def published_band(rho: float | None) -> tuple[float, float] | None:
    """The published band for this training rho, or None when the field publishes none for it."""
    if rho is None:
        return None
    return next((band for r, band in PUBLISHED_BANDS.items() if abs(r - rho) < RHO_TOLERANCE), None)


def is_paper_scale(scale: EntryScale) -> bool:
    return scale.train_images >= PAPER_SCALE_MIN_TRAIN


def band_verdict(mean_percent: float, band: tuple[float, float]) -> str:
    """'inside', 'below' or 'above' the band, by the mean over seeds (in %)."""
    low, high = band
    if math.isnan(mean_percent):
        return "not measured"
    if mean_percent < low:
        return "below"
    return "above" if mean_percent > high else "inside"


def sanity_lines(
    entries: Sequence[str],
    scales: Mapping[str, EntryScale] | None,
    own_head: Mapping[str, tuple[float, str]],
    standings: Mapping[str, str],
) -> list[str]:
    """One line per BiasedMNIST entry at a published rho.

    ``own_head``: entry -> (mean unbiased accuracy in %, its printed cell) of cross-entropy's own head;
    ``standings``: entry -> one sentence on where each method stands against the floors.
    """
    if scales is None:
        return [
            "The entries' scales were not given to the report (build_report's entry_scales): no sanity rows."
        ]
    lines = []
    for entry in entries:
        scale = scales.get(entry)
        band = published_band(scale.rho if scale else None)
        if scale is None or band is None:
            continue
        where = f"`{entry}` (rho {scale.rho:g}, {scale.train_images} training images)"
        if not is_paper_scale(scale):
            lines.append(
                f"- {where}: not comparable: CPU scale (the published band "
                f"{band[0]:g}–{band[1]:g}% comes from runs on at least {PAPER_SCALE_MIN_TRAIN} images)."
            )
            continue
        mean, cell = own_head.get(entry, (math.nan, "not measured"))
        found = band_verdict(mean, band)
        published = f"published band {band[0]:g}–{band[1]:g}%"
        head = (
            f"vanilla cross-entropy (own head) {cell} unbiased, {published}: {found}"
            if found != "not measured"
            else "vanilla cross-entropy's own head was not measured"
        )
        standing = standings.get(entry, "no floors were measured")
        lines.append(f"- {where}: {head}. {standing}")
    if not lines:
        rhos = " / ".join(f"{r:g}" for r in PUBLISHED_BANDS)
        return [f"No BiasedMNIST entry at a published rho ({rhos}): no sanity rows."]
    return lines
