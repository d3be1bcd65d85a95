"""The fleet: many gateways, one hospital (collector, store, report, page)."""
