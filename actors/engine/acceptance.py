"""A session's acceptance estimate per rank: how often the target's token is the draft's r-th choice.

Each step's walk over the token tree (`tree.verify_tree`) counts, per rank r, the visited nodes
that had an r-th child (tried_r) and the r-th children accepted (hits_r); a chain is width 1.
The rate of rank r, with a prior counted as 4 trials:
    a_r = (hits_r + 4·prior_r) / (tried_r + 4),   prior_1 = α0,   prior_r = (1 − α0) / (r + 1)
scaled so that Σ_r a_r ≤ 0.99 (the memory model's tree shapes need a sub-distribution).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RankAcceptance:
    """The counts of one session, ranks 1..width_max."""

    hits: list[int]
    tried: list[int]

    @classmethod
    def empty(cls, width_max: int) -> RankAcceptance:
        return cls(hits=[0] * width_max, tried=[0] * width_max)

    def record(self, accepted: int, gamma: int, tried: list[int] | None = None, hits: list[int] | None = None) -> None:
        """A step that drafted γ > 0 nodes and accepted `accepted`; without the walk's counts it
        counts as a chain's (min(accepted + 1, γ) tried at rank 1). Ranks past width_max are dropped."""
        if tried is None or hits is None:
            tried, hits = [min(accepted + 1, gamma)], [accepted]
        assert len(tried) == len(hits) and sum(hits) == accepted, (tried, hits, accepted)
        for r, (t, h) in enumerate(zip(tried[: len(self.tried)], hits[: len(self.hits)])):
            self.tried[r] += t
            self.hits[r] += h

    def rates(self, prior_alpha: float, width: int) -> list[float]:
        """a_1..a_width (see the module doc)."""
        priors = [prior_alpha] + [(1 - prior_alpha) / (r + 1) for r in range(2, len(self.hits) + 1)]
        rates = [(h + 4 * p) / (t + 4) for h, t, p in zip(self.hits, self.tried, priors)][:width]
        total = sum(rates)
        return [a * min(1.0, 0.99 / total) for a in rates]
