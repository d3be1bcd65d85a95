"""Rule families of the engine (one module per family) and the rule catalogue."""
