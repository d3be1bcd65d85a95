"""The service core: the supervisor (:mod:`daemon.core.gateway`), one channel per pump (state,
polling, events), the command gate every rate change goes through, vitals intake, and the
systemd watchdog."""
