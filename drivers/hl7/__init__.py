"""HL7 v2 vitals over MLLP: framing, ORU^R01 mapping, ACKs, listener, client.

Drivers import only ``protocol.errors`` and their own code. Public API:

- :class:`VitalsSample`, :class:`Observation`, :class:`Parameter` - the value types
- :func:`parse_oru`, :func:`build_oru` - ORU^R01 <-> VitalsSample
- :func:`build_ack`, :func:`parse_ack`, :func:`peek_header` - acknowledgements
- :class:`MllpFrame`, :class:`MllpDecoder` - capped, resynchronising MLLP codec
- :class:`VitalsListener`, :class:`VitalsClient` with :class:`ReceiverConfig` - transports
"""

from __future__ import annotations

from drivers.hl7.ack import Ack, AckCode, MessageHeader, build_ack, parse_ack, peek_header
from drivers.hl7.client import VitalsClient
from drivers.hl7.errors import Hl7ErrorCode, MessageError
from drivers.hl7.listener import VitalsListener
from drivers.hl7.mllp import DEFAULT_MAX_FRAME, Discarded, DiscardReason, MllpDecoder, MllpFrame
from drivers.hl7.oru import build_oru, parse_oru
from drivers.hl7.receiver import ReceiverConfig, ReceiverStats
from drivers.hl7.sample import CANONICAL_UNIT, Observation, Parameter, VitalsSample
from drivers.hl7.url import DEFAULT_PORT, parse_tcp_url

__all__ = [
    "CANONICAL_UNIT",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_PORT",
    "Ack",
    "AckCode",
    "DiscardReason",
    "Discarded",
    "Hl7ErrorCode",
    "MessageError",
    "MessageHeader",
    "MllpDecoder",
    "MllpFrame",
    "Observation",
    "Parameter",
    "ReceiverConfig",
    "ReceiverStats",
    "VitalsClient",
    "VitalsListener",
    "VitalsSample",
    "build_ack",
    "build_oru",
    "parse_ack",
    "parse_oru",
    "parse_tcp_url",
    "peek_header",
]
