"""Reply-fault arming shared by the serial pump models (New Era, PHD ULTRA).

A fault is armed for ``count`` replies (None: until cleared), optionally only for the replies to
one command sent as a write; :meth:`FaultArming.take_fault` consumes one count per reply it
applies to. Each vendor model says how a command name is spelled and what a write is.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Collection
from typing import ClassVar, Generic, Protocol, TypeVar


class NamedCommand(Protocol):
    @property
    def name(self) -> str: ...


FaultT = TypeVar("FaultT", bound=enum.Enum)
CommandT = TypeVar("CommandT", bound=NamedCommand)


class FaultArming(abc.ABC, Generic[FaultT, CommandT]):
    """Mixin of a pump model: ``faults`` and ``fault_on`` are fields of the model."""

    faults: dict[FaultT, int | None]
    fault_on: dict[FaultT, str]

    #: the command names a fault may be restricted to
    command_names: ClassVar[Collection[str]]

    @abc.abstractmethod
    def command_key(self, name: str) -> str:
        """``name`` as the pump spells command names (e.g. upper case)."""

    @abc.abstractmethod
    def is_write(self, command: CommandT) -> bool:
        """Whether ``command`` sets something or acts (as opposed to a query of a value)."""

    def inject(self, fault: FaultT, count: int | None = None, *, on: str | None = None) -> None:
        """Arm a reply fault for ``count`` replies (None: until :meth:`clear_faults`).

        ``on`` (a command name) restricts the fault to the replies to that command sent as a
        write (with parameters, or an action): queries and other commands pass untouched and do
        not use up ``count``.
        """
        key = None if on is None else self.command_key(on)
        if key is not None and key not in self.command_names:
            raise ValueError(f"fault {fault.value!r}: unknown command {on!r}")
        self.faults[fault] = count
        if key is None:
            self.fault_on.pop(fault, None)
        else:
            self.fault_on[fault] = key

    def clear_faults(self) -> None:
        self.faults.clear()
        self.fault_on.clear()

    def take_fault(self, fault: FaultT, command: CommandT | None = None) -> bool:
        """True when ``fault`` applies to the reply to ``command`` (and consume one count)."""
        if fault not in self.faults:
            return False
        on = self.fault_on.get(fault)
        if on is not None and (command is None or command.name != on or not self.is_write(command)):
            return False
        left = self.faults[fault]
        if left is not None:
            if left <= 1:
                del self.faults[fault]
                self.fault_on.pop(fault, None)
            else:
                self.faults[fault] = left - 1
        return True
