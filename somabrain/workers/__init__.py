"""Background workers: the integrity worker and the reward worker (token ledger)."""

__all__: list[str] = []
