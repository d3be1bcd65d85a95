"""What people look at: ``infusiond watch`` (terminal), the web dashboard and its HTTP API,
journal replay, and the quantity formatting they share."""
