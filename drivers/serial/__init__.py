"""What every serial pump protocol shares: one line per daisy chain, capped buffers, command
tables as data, the resync-after-garbage rule and the write-verify judgement.

A vendor folder (``drivers/newera``, ``drivers/phd``) keeps only its own framing, grammar and
device facts; the transport, the line lock, the settle-after-failure rule, the backoff and the
``applied``/``failed``/``uncertain`` decision live here once.
"""
