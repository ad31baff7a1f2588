"""`seeds: auto` — the plain settings of a sequential seed design (declared once, here; the statistics that
use them are orchestrator/sequential.py, the Tune searcher that spends seeds orchestrator/seed_search.py).

Why: a fixed number of seeds is too many for arms whose answer is already clear and too few for the rest.
With `seeds: auto` every arm starts at `min` seeds and gets one more at a time only while one of its
comparisons with the reference (either metric) is still open, up to `max`.  A comparison is decided as
*lower* or *higher* (the ratio of geometric means differs from 1) or *equivalent* (within ±`margin`, two
one-sided tests), with family-wise error `alpha` over every look and every comparison of a data set × model.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["SeedDesign", "AUTO"]

AUTO = "auto"  # the word that asks for the design (`--seeds auto`, `seeds: auto` in a study)


@dataclass(frozen=True)
class SeedDesign:
    min: int = 3  # seeds every arm gets first (the fixed design's 3)
    max: int = 10  # seeds an arm may reach; past it a comparison is reported "open at n = max"
    margin: float = 0.10  # equivalent: the ratio of geometric means within [1/(1+margin), 1+margin]
    alpha: float = 0.05  # family-wise error over the looks and the comparisons of a data set × model

    def __post_init__(self):
        if not (isinstance(self.min, int) and isinstance(self.max, int) and 2 <= self.min <= self.max <= 50):
            raise ValueError(f"seeds: auto needs integers 2 <= min <= max <= 50, got min={self.min!r}, "
                             f"max={self.max!r}")
        if not (isinstance(self.margin, (int, float)) and 0 < self.margin < 1):
            raise ValueError(f"seeds: auto margin must be a fraction in (0, 1), e.g. 0.1 for ±10 %, got "
                             f"{self.margin!r}")
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 0.5):
            raise ValueError(f"seeds: auto alpha must be in (0, 0.5), got {self.alpha!r}")

    @property
    def seeds(self) -> list[int]:
        """The seeds an arm may get, in the order it gets them."""
        return list(range(self.max))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def parse(cls, value, where: str) -> "SeedDesign | None":
        """`seeds:` of a study: a list (fixed seeds: None here), `auto`, or `{auto: {min, max, margin, alpha}}`."""
        if value == AUTO:
            return cls()
        if isinstance(value, dict) and set(value) == {AUTO}:
            settings = value[AUTO] or {}
            known = {f.name for f in fields(cls)}
            if not isinstance(settings, dict) or set(settings) - known:
                raise ValueError(f"{where}: seeds: {{auto: ...}} takes {sorted(known)}, got {settings!r}")
            try:
                return cls(**settings)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        return None
