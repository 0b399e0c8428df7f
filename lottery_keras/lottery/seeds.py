"""Seeds derived from a trial's seed, so that every random draw of a round is a function of (seed, round, purpose)
and a resumed run draws what an uninterrupted one does."""

from __future__ import annotations

import numpy as np


def derived_seed(*parts: int | str) -> int:
    """A seed below 2**20 determined by `parts` (trial seed, round, purpose)."""
    words = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") % 2**32 for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0] % 2**20)
