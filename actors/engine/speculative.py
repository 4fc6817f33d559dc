"""The lossless speculative-sampling rule and its statistics (Leviathan et al. 2023).

A step verifies a chain of γ draft tokens d_1..d_γ drawn from q against the target's
distributions p_1..p_{γ+1} computed in one forward:
    accept d_j with probability min(1, p_j(d_j) / q_j(d_j)), in order;
    at the first rejection emit x ~ norm(max(0, p_j − q_j)) and stop;
    if all γ are accepted emit a bonus x ~ p_{γ+1}.
The emitted tokens are distributed exactly as the target's own samples. Greedy decoding is the
limit of zero temperature: accept while d_j = argmax p_j, then emit argmax p at the first
mismatch (or the bonus). A token tree would replace `verify_chain` by a walk over branches that
answers the same (accepted, emitted) pair, so its callers need not change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


def probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    # softmax(logits / T) over the last axis, in float64
    assert temperature > 0.0
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    # inverse CDF: the first x with F(x) > u·F(V−1), u ~ U[0, 1)
    assert probs.ndim == 1
    cdf = np.cumsum(probs, dtype=np.float64)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(probs) - 1))


def verify_greedy(drafts: np.ndarray, target_logits: np.ndarray) -> tuple[int, np.ndarray]:
    # n = the first j with d_j != argmax p_j (γ if none); emit d_1..d_n, argmax p_{n+1}
    (gamma,) = drafts.shape
    assert target_logits.ndim == 2 and target_logits.shape[0] == gamma + 1
    best = target_logits.argmax(axis=-1)
    mismatch = np.nonzero(drafts != best[:gamma])[0]
    n = int(mismatch[0]) if len(mismatch) else gamma
    return n, np.concatenate([drafts[:n], best[n : n + 1]]).astype(np.int64)


def verify_sampled(
    drafts: np.ndarray, draft_probs: np.ndarray, target_probs: np.ndarray, rng: np.random.Generator
) -> tuple[int, np.ndarray]:
    # accept d_j w.p. min(1, p_j(d_j)/q_j(d_j)); at the first rejection emit ~norm(max(0, p_j − q_j)); bonus ~p_{γ+1}
    (gamma,) = drafts.shape
    vocab = target_probs.shape[-1]
    assert draft_probs.shape == (gamma, vocab) and target_probs.shape == (gamma + 1, vocab)
    for j in range(gamma):
        d = int(drafts[j])
        p, q = float(target_probs[j, d]), float(draft_probs[j, d])
        if q > 0.0 and rng.random() * q < p:
            continue
        residual = np.maximum(target_probs[j] - draft_probs[j].astype(np.float64), 0.0)
        x = sample(residual, rng) if residual.sum() > 0.0 else sample(target_probs[j], rng)
        return j, np.append(drafts[:j], x).astype(np.int64)
    return gamma, np.append(drafts, sample(target_probs[gamma], rng)).astype(np.int64)


def verify_chain(
    drafts: np.ndarray,
    target_logits: np.ndarray,
    temperature: float,
    draft_probs: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[int, np.ndarray]:
    """(accepted count n, emitted tokens: n accepted drafts then one target token)."""
    if temperature <= 0.0:
        return verify_greedy(drafts, target_logits)
    assert draft_probs is not None and rng is not None
    return verify_sampled(drafts, draft_probs, probabilities(target_logits, temperature), rng)


@dataclass(frozen=True)
class StepStats:
    """One speculative step of one session."""

    session: str
    gamma: int
    accepted: int
    emitted: int
    draft_s: float
    target_s: float
    width: int = 1
    forwards: int = 0  # draft forwards (a tree's nodes past them are leaves)
    looked_up: int = 0  # emitted tokens that a lookup tail proposed (`lookup`), not the draft

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SpecStats:
    """Running totals over steps: tokens, acceptance (α̂ = accepted / considered), times."""

    steps: int = 0
    tokens: int = 0
    drafted: int = 0
    forwards: int = 0
    accepted: int = 0
    looked_up: int = 0
    considered: int = 0
    draft_s: float = 0.0
    target_s: float = 0.0
    accepted_per_step: list[int] = field(default_factory=list)

    def add(self, step: StepStats) -> None:
        self.steps += 1
        self.tokens += step.emitted
        self.drafted += step.gamma
        self.forwards += step.forwards
        self.accepted += step.accepted
        self.looked_up += step.looked_up
        self.considered += min(step.accepted + 1, step.gamma)
        self.draft_s += step.draft_s
        self.target_s += step.target_s
        self.accepted_per_step.append(step.accepted)

    @property
    def alpha(self) -> float:
        return self.accepted / self.considered if self.considered else 0.0

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "drafted": self.drafted,
            "forwards": self.forwards,
            "accepted": self.accepted,
            "looked_up": self.looked_up,
            "alpha": self.alpha,
            "mean_accepted": self.accepted / self.steps if self.steps else 0.0,
            "tokens_per_step": self.tokens / self.steps if self.steps else 0.0,
            "draft_s": self.draft_s,
            "target_s": self.target_s,
            "accepted_per_step": list(self.accepted_per_step),
        }


class Timer:
    """`with Timer() as t: ...; t.seconds`."""

    def __enter__(self):
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        return False
