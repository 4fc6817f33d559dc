"""A session's acceptance estimate per rank: how often the target's token is the draft's r-th choice.

Each step's walk over the token tree (`tree.verify_tree`) counts, per rank r, the visited nodes
that had an r-th child (tried_r) and the r-th children accepted (hits_r); a chain is width 1.
The rate of rank r, with a prior counted as 4 trials:
    a_r = (hits_r + 4·prior_r) / (tried_r + 4),   prior_1 = α0,   prior_r = (1 − α0) / (r + 1)
each at most the rate of the rank before it (the r-th choice is taken to be right no more often
than the (r−1)-th), scaled so that Σ_r a_r ≤ 0.99 (the memory model's tree shapes need a
sub-distribution).

A chain step also counts by depth: depth d was tried when the d − 1 nodes above it were accepted,
and hit when it was accepted too. Acceptance is bursty (after a run of accepted tokens the next is
accepted more often than on average), which one α cannot say; the chain's length is priced from
    c_d = (hits_d + 4·a_1) / (tried_d + 4)
the chance that node d is accepted given that the nodes above it were (a depth never tried: a_1).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RankAcceptance:
    """The counts of one session, ranks 1..width_max."""

    hits: list[int]
    tried: list[int]
    depth_hits: list[int] = field(default_factory=list)  # chain steps, by depth 1, 2, ...
    depth_tried: list[int] = field(default_factory=list)

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
        # a chain: depths 1 .. tried[0] tried (min(accepted + 1, its length)), 1 .. accepted hit
        if not any(tried[1:]):
            deepest = tried[0] if tried else 0
            grow = deepest - len(self.depth_tried)
            if grow > 0:
                self.depth_tried += [0] * grow
                self.depth_hits += [0] * grow
            for d in range(deepest):
                self.depth_tried[d] += 1
                self.depth_hits[d] += d < accepted

    def rates(self, prior_alpha: float, width: int) -> list[float]:
        """a_1..a_width (see the module doc), none above the rank before it: the rank model's order,
        which the shape is priced with and a sampled tree grown by."""
        priors = [prior_alpha] + [(1 - prior_alpha) / (r + 1) for r in range(2, len(self.hits) + 1)]
        rates = [(h + 4 * p) / (t + 4) for h, t, p in zip(self.hits, self.tried, priors)][:width]
        for r in range(1, len(rates)):
            rates[r] = min(rates[r], rates[r - 1])
        total = sum(rates)
        return [a * min(1.0, 0.99 / total) for a in rates]

    def depth_rates(self, prior_alpha: float, depth: int) -> list[float]:
        """c_1..c_depth of a chain (see the module doc), each at most 0.99."""
        a1 = self.rates(prior_alpha, 1)[0]
        counts = list(zip(self.depth_hits, self.depth_tried))[:depth]
        rates = [(h + 4 * a1) / (t + 4) for h, t in counts] + [a1] * (depth - len(counts))
        return [min(c, 0.99) for c in rates]
