"""OpenSkill Plackett-Luce ratings across windows, rated in small deterministic groups.

Why groups: in one Plackett-Luce match of N players each player's sigma update is spread over
N − 1 comparisons through a shared denominator, so with N in the hundreds sigma barely moves and
ordinals (mu − 3 sigma) stay near zero for everyone for a very long time. Matches of a few players
move sigma like head-to-head games do. Groups are a seeded shuffle of the evaluated uids that
changes every window, so over windows everyone meets everyone, and every validator that sees
the same LossScores computes the same ratings.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from openskill.models import PlackettLuce

DEFAULT_MU = 25.0
DEFAULT_SIGMA = DEFAULT_MU / 3.0


@dataclass(frozen=True)
class Rating:
    mu: float = DEFAULT_MU
    sigma: float = DEFAULT_SIGMA

    @property
    def ordinal(self) -> float:
        """Conservative skill estimate (mu − 3 sigma), as openskill's ``ordinal()``."""
        return self.mu - 3.0 * self.sigma


def make_model(beta: float, tau: float) -> PlackettLuce:
    return PlackettLuce(mu=DEFAULT_MU, sigma=DEFAULT_SIGMA, beta=beta, tau=tau)


def rating_groups(uids: list[int], group_size: int, seed: str) -> list[list[int]]:
    """Shuffle ``uids`` deterministically from ``seed`` and cut into groups of ``group_size``.

    A leftover group smaller than half a group joins the previous one, so nobody plays a match
    of one (which rates nothing) or a lopsided pair.
    """
    order = sorted(uids)
    random.Random(seed).shuffle(order)  # str seeds hash with sha512: same on every machine
    groups = [order[i : i + group_size] for i in range(0, len(order), group_size)]
    if len(groups) > 1 and len(groups[-1]) < max(2, (group_size + 1) // 2):
        groups[-2].extend(groups.pop())
    return [g for g in groups if len(g) > 1]


def rate_window(
    ratings: Mapping[int, Rating],
    loss_scores: Mapping[int, float],
    model: PlackettLuce,
    group_size: int,
    seed: str,
) -> dict[int, Rating]:
    """New ratings for every uid in ``loss_scores`` (higher LossScore ranks better).

    Uids missing from ``ratings`` start at the default rating. Ratings of uids not in
    ``loss_scores`` are returned unchanged.
    """
    out = dict(ratings)
    for group in rating_groups(list(loss_scores), group_size, seed):
        teams = [[model.rating(mu=r.mu, sigma=r.sigma)] for r in (ratings.get(u, Rating()) for u in group)]
        ranks = _ranks([loss_scores[u] for u in group])
        rated = model.rate(teams, ranks=ranks)
        for uid, team in zip(group, rated, strict=True):
            out[uid] = Rating(mu=float(team[0].mu), sigma=float(team[0].sigma))
    return out


def _ranks(scores: list[float]) -> list[float]:
    """Rank 1 = best (highest score); equal scores share a rank (a draw)."""
    distinct = sorted(set(scores), reverse=True)
    place = {s: i + 1 for i, s in enumerate(distinct)}
    return [float(place[s]) for s in scores]
