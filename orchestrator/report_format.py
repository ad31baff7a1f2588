"""How the report writes numbers: 3 significant figures, p-values, ratios with their interval (shared by
the tables, the Findings and orchestrator/contributions.py)."""
from __future__ import annotations

import math

import numpy as np


def fmt(x, sig: int = 3) -> str:
    """3 significant figures in positional notation (356, 2.54, 0.0123, 7,140), never 1.7e+02."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    x = float(x)
    if x == 0:
        return "0"
    digits = sig - 1 - int(math.floor(math.log10(abs(x))))
    rounded = round(x, digits)
    if rounded != 0 and int(math.floor(math.log10(abs(rounded)))) > sig - 1 - digits:  # 9.9951 → 10.0
        digits -= 1
        rounded = round(x, digits)
    if digits <= 0:
        return f"{rounded:,.0f}"
    return f"{rounded:.{digits}f}"


def _ratio(r, short: str) -> str:
    ratio = r[f"{short}_ratio"]
    if not np.isfinite(ratio):
        return "–"
    lo, hi = r[f"{short}_ratio_lo"], r[f"{short}_ratio_hi"]
    ci = f" [{fmt(lo)}, {fmt(hi)}]" if np.isfinite(lo) else ""
    return f"×{fmt(ratio, 3)}{ci}"


def fmt_p(p: float) -> str:
    return "–" if not np.isfinite(p) else ("<0.001" if p < 1e-3 else fmt(p, 3))  # 0.0499, never "0.050"


def _p(r, short: str) -> str:
    p = r[f"{short}_p_holm"]
    if not np.isfinite(p):
        return "–"
    return f"**{fmt_p(p)}**\\*" if r[f"{short}_significant"] else fmt_p(p)


def _sentence(text: str) -> str:
    """The first character upper-cased, nothing else touched (str.capitalize() lowercases the rest: Å → å)."""
    return text[:1].upper() + text[1:]
