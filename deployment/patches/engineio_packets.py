"""Engine.IO-level garbage: replaces `engineio.packet.Packet.decode` (process-wide) for deployment/operations/limits.py.

python-engineio 4.15 handles undecodable packets badly:

- It decodes each WebSocket frame or polling packet unguarded: an empty frame, a type that is not a digit, or
  JSON nested too deep raise. Over WebSocket that kills the connection's handler (gevent prints a traceback,
  the session lingers until its ping timeout); over polling it logs "post request handler error" with a
  traceback.
- An unknown packet type (7-9) sent by polling makes the POST handler disconnect the session and wait until
  the client has read the CLOSE packet, which it never does while its POST is pending: the request hangs and
  its greenlet is never freed (enough of them fill the worker's pool).

The replacement calls python-engineio's own decode; JSON it cannot parse (too deep) stays text, as
python-engineio already does for invalid JSON, and anything else it cannot decode, unknown types included,
becomes a CLOSE packet, which ends that client's session cleanly. One warning per 10 seconds counts them.

With a python-engineio version other than VERIFIED it stays off (one log line, deployment/patches/pins.py) and
python-engineio's own decode runs: garbage then gets python-engineio's own reaction described above (a
traceback, a session left to its ping timeout, a hanging POST); the other clients are still served.

No "python" pin: it relies on python-engineio's decode only. JSON too deep for the json module raises
RecursionError on CPython 3.11; were another Python to raise a ValueError instead, that packet would close its
session (the garbage path) rather than stay text, and were it to parse it, it would be data: either way the
other clients are served and nothing raises.
"""

import binascii
import logging
import time

from engineio import packet as eio_packet

from deployment.patches import pins

VERIFIED = {"python-engineio": ("4.15.1",)}
REPLACES = ["engineio.packet.Packet.decode"]
SERVES = "bad input: undecodable packets close only their session (deployment/operations/limits.py)"
PROVEN_BY = "tests/deployment/test_bad_input.py, tests/deployment/test_patches_operations.py"

log = logging.getLogger("realtime.limits")  # as before the move: it is a limit's warning

WINDOW = 10.0  # seconds between two warnings
state = {"count": 0, "last_log": float("-inf"), "library_decode": None}


def garbage(encoded_packet, exc):
    """Counts one undecodable packet; a warning at most once per WINDOW."""
    state["count"] += 1
    now = time.monotonic()
    if now - state["last_log"] >= WINDOW:
        state["last_log"] = now
        log.warning(
            "malformed Engine.IO packet (%s), closing that session; %d so far; packet starts %r",
            str(exc)[:80] or type(exc).__name__,
            state["count"],
            encoded_packet[:40],
        )


def decode(packet, encoded_packet):
    """python-engineio's Packet.decode; what it cannot decode becomes a CLOSE packet instead of raising."""
    try:
        state["library_decode"](packet, encoded_packet)
    except RecursionError:
        packet.data = encoded_packet[1:]  # the type digit was read; the JSON is too deep to parse
    except (ValueError, IndexError, TypeError, binascii.Error) as exc:
        packet.binary, packet.packet_type, packet.data = False, eio_packet.CLOSE, None
        garbage(encoded_packet, exc)
    if not 0 <= packet.packet_type < len(eio_packet.packet_names):
        garbage(encoded_packet, ValueError(f"unknown packet type {packet.packet_type}"))
        packet.binary, packet.packet_type, packet.data = False, eio_packet.CLOSE, None


def install():
    """Replaces Packet.decode (once per process) if python-engineio is a verified version; True if it is."""
    if not pins.verified("engineio_packets", VERIFIED):
        return False
    if eio_packet.Packet.decode is not decode:
        state["library_decode"] = eio_packet.Packet.decode
        eio_packet.Packet.decode = decode
    return True
