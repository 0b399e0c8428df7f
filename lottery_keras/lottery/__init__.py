"""The lottery: pruning criteria, the strategy registry, the IMP controller and run folders."""
