"""Rule families of the engine (one module per family); rule ids live in protocol.rule_ids."""
