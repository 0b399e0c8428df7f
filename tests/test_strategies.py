"""The strategy registry: each strategy's masks, start and dependencies, as the controller reads them."""

from __future__ import annotations

import pytest

from lottery_keras.lottery import strategies
from lottery_keras.lottery.strategies import STRATEGIES, Strategy


def test_the_paper_strategies_and_their_dependencies():
    ticket, reinit, random = (STRATEGIES[name] for name in ("magnitude_rewind", "magnitude_random",
                                                             "random_rewind"))
    assert (ticket.masks, ticket.start) == ("magnitude", "theta0")
    assert ticket.dependencies(0) == [] and ticket.dependencies(3) == [("magnitude_rewind", 2)]
    assert (reinit.masks, reinit.start) == ("borrowed", "reinit")
    assert reinit.dependencies(0) == [] and reinit.dependencies(3) == [("magnitude_rewind", 3)]
    assert (random.masks, random.start) == ("random", "theta0")
    assert random.dependencies(0) == [("magnitude_rewind", 0)]  # the same dense computation: copied
    assert random.dependencies(3) == [("random_rewind", 2)]
    assert random.dependencies(3, "global") == [("random_rewind", 2), ("magnitude_rewind", 3)]


def test_the_es667_reinit_chain_prunes_its_own_reinitialised_networks():
    chain = STRATEGIES["reinit_chain"]
    assert (chain.masks, chain.start) == ("magnitude", "reinit")
    assert chain.dependencies(0) == [("magnitude_random", 0)]  # the same dense reinitialised network: copied
    assert chain.dependencies(3) == [("reinit_chain", 2)] == chain.dependencies(3, "global")


def test_resolve_keeps_registry_order_and_names_the_choices():
    assert strategies.resolve(["random_rewind", "magnitude_rewind"]) == ["magnitude_rewind", "random_rewind"]
    assert strategies.resolve(["all"]) == list(STRATEGIES)
    assert strategies.resolve(["core", "oneshot"]) == ["magnitude_rewind", "magnitude_random", "random_rewind",
                                                       "reinit_chain", "oneshot"]
    with pytest.raises(ValueError, match="unknown strategy best; choose from: magnitude_rewind"):
        strategies.resolve(["best"])
    assert strategies.ordered(["zeta", "random_rewind", "magnitude_rewind"]) == [
        "magnitude_rewind", "random_rewind", "zeta"]


def test_inconsistent_entries_are_refused():
    with pytest.raises(ValueError, match="masks_from"):
        Strategy("x", "x", "k", masks="borrowed", start="theta0")
    with pytest.raises(ValueError, match="masks must be one of"):
        Strategy("x", "x", "k", masks="movement", start="theta0")
