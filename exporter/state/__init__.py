"""What survives a restart: the ledger of outstanding canaries and the token key (ledger)."""

from exporter.state.ledger import (
    LEDGER_MAX_AGE,
    Ledger,
    StateCollector,
    StateHealth,
    key_problem,
    load_or_create_key,
)

__all__ = ["LEDGER_MAX_AGE", "Ledger", "StateCollector", "StateHealth", "key_problem", "load_or_create_key"]
