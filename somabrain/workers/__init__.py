"""Background workers: the integrity worker, the reward worker (token ledger) and the telemetry
publisher."""

__all__: list[str] = []
