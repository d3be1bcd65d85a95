"""Errors of the HL7 vitals driver: each names the segment and field at fault.

A :class:`MessageError` becomes an ``AE`` acknowledgement whose ``MSA-3`` text and ``ERR``
segment carry :attr:`MessageError.location` (``"OBX^3^5"``: segment, its 1-based occurrence
and field) and the HL7 table 0357 error code, so the sender learns exactly what was wrong.
"""

from __future__ import annotations

import enum

from drivers.errors import DriverError


class Hl7ErrorCode(enum.Enum):
    """HL7 table 0357 (message error condition codes) entries that this driver uses."""

    SEGMENT_SEQUENCE = ("100", "Segment sequence error")
    REQUIRED_FIELD_MISSING = ("101", "Required field missing")
    DATA_TYPE = ("102", "Data type error")
    TABLE_VALUE_NOT_FOUND = ("103", "Table value not found")
    UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
    UNSUPPORTED_EVENT = ("201", "Unsupported event code")
    APPLICATION_ERROR = ("207", "Application internal error")

    @property
    def code(self) -> str:
        """The numeric code as sent in ``ERR-3``."""
        return self.value[0]

    @property
    def text(self) -> str:
        """The table's text for the code."""
        return self.value[1]


class MessageError(DriverError):
    """An HL7 message that cannot be accepted; the message names segment, field and value."""

    def __init__(
        self,
        message: str,
        *,
        segment: str = "",
        occurrence: int = 1,
        field: int | None = None,
        code: Hl7ErrorCode = Hl7ErrorCode.DATA_TYPE,
    ) -> None:
        super().__init__(message)
        self.text = message
        self.segment = segment
        self.occurrence = occurrence
        self.field = field
        self.code = code

    @property
    def location(self) -> str:
        """``ERR-2`` error location: ``SEG^occurrence^field`` (empty when unknown)."""
        if not self.segment:
            return ""
        if self.field is None:
            return f"{self.segment}^{self.occurrence}"
        return f"{self.segment}^{self.occurrence}^{self.field}"
