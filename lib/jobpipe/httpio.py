"""Reading an HTTP answer body with a size cap and a total deadline: one implementation for every
outbound call (model servers, the BA API, the Signal gateway).

Why: `requests` bounds each socket read (`timeout=(connect, read)`) but neither the size of an
answer nor the time the whole body takes. A server that sends 100 MB is read whole into memory,
and one that trickles a byte per second never trips a 2 s read timeout. `read_body` reads with
`read1` (whatever the socket has, at most one read at a time), so the cap and the deadline are
checked between reads: the body stops after at most `max_bytes` + one chunk, and after the
deadline + at most one read timeout.

Not covered: a server trickling its *status line and headers* (http.client reads those before
`requests` returns); each header line is capped at 64 kB and 100 headers by http.client.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import requests
import urllib3

CHUNK = 1 << 20  # upper bound of one read; read1 returns what is there, so small answers take one read


class BodyLimitExceeded(Exception):
    """The answer broke the cap (`kind="too_large"`) or the deadline (`kind="deadline"`)."""

    def __init__(self, kind: str, message: str, head: bytes = b"") -> None:
        super().__init__(message)
        self.kind = kind
        self.head = head  # the first bytes read, for an error message that shows what came


def deadline_after(seconds: float, clock: Callable[[], float] = time.monotonic) -> float:
    """The monotonic time `seconds` from now (what `read_body` takes as `deadline`)."""
    return clock() + seconds


def read_body(
    resp: requests.Response,
    *,
    max_bytes: int,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """The (decoded) body of a `stream=True` response, at most `max_bytes`, finished by `deadline`.

    Raises BodyLimitExceeded when either is broken (nothing beyond `max_bytes` + one chunk is kept
    in memory), and requests' own exceptions (ChunkedEncodingError, ConnectionError, ...) for
    transport failures, as `resp.content` would. The caller closes the response.
    """
    declared = (resp.headers.get("Content-Length") or "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise BodyLimitExceeded("too_large", f"answer of {declared} bytes exceeds the cap of {max_bytes}")
    raw = resp.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # a test double or an adapter without urllib3: read in chunks
        chunks = resp.iter_content(CHUNK)
        read1 = lambda _n: next(chunks, b"")  # noqa: E731
    buf = bytearray()
    while True:
        if clock() > deadline:
            raise BodyLimitExceeded("deadline", f"answer not complete in time ({len(buf)} bytes read)")
        try:
            chunk = read1(CHUNK)
        except urllib3.exceptions.ProtocolError as exc:
            raise requests.exceptions.ChunkedEncodingError(exc) from exc
        except urllib3.exceptions.DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(exc) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.exceptions.ReadTimeout(exc) from exc
        except urllib3.exceptions.SSLError as exc:
            raise requests.exceptions.SSLError(exc) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise requests.exceptions.ConnectionError(exc) from exc
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > max_bytes:
            raise BodyLimitExceeded(
                "too_large", f"answer larger than the cap of {max_bytes} bytes", head=bytes(buf[:200])
            )
