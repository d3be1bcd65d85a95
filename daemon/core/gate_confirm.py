"""Confirmation tokens: a command whose verdict is ``confirm`` is answered with a token valid
``CONFIRM_TTL``; the same command (same pump, same plan) sent again with it executes once."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

CONFIRM_TTL = timedelta(seconds=120)


@dataclass(frozen=True, slots=True)
class _Pending:
    pump_id: str
    fingerprint: str
    expires: datetime


@dataclass
class Confirmations:
    """The tokens issued and not yet used or expired."""

    _tokens: dict[str, _Pending] = field(default_factory=dict)

    def issue(self, pump_id: str, fingerprint: str, now: datetime) -> tuple[str, datetime]:
        """A new token for the plan ``fingerprint`` at ``pump_id``, and when it expires."""
        self._expire(now)
        token = secrets.token_urlsafe(18)
        expires = now + CONFIRM_TTL
        self._tokens[token] = _Pending(pump_id, fingerprint, expires)
        return token, expires

    def redeem(self, token: str, pump_id: str, fingerprint: str, now: datetime) -> str | None:
        """Use ``token`` for this plan: None when it is valid (it cannot be used again), else
        why it is refused (the message names the field)."""
        self._expire(now)
        pending = self._tokens.get(token)
        if pending is None:
            return "confirm.token: unknown or expired"
        if pending.pump_id != pump_id or pending.fingerprint != fingerprint:
            return "confirm.token: was issued for a different command"
        del self._tokens[token]
        return None

    def _expire(self, now: datetime) -> None:
        for token in [t for t, p in self._tokens.items() if p.expires < now]:
            del self._tokens[token]
