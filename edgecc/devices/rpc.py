"""How a client reaches a device: the tracker, the device key and the server's token."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgeccError


@dataclass(frozen=True)
class RPCSettings:
    tracker_host: str
    tracker_port: int
    key: str
    session_timeout_s: int = 120
    wait_s: float = 15.0  # how long to wait for a busy device to become free
    # the device's shared secret (edgecc-run serve's token file); never printed
    token: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, tracker: str, key: str, *, session_timeout_s: int = 120,
              token_file: str | Path | None = None) -> RPCSettings:
        host, sep, port = tracker.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise EdgeccError(f"bad --rpc-tracker {tracker!r}: expected HOST:PORT")
        if not key:
            raise EdgeccError("--rpc-tracker needs --rpc-key (the device key)")
        if session_timeout_s < 1:
            raise EdgeccError("the RPC session timeout must be at least 1 s")
        return cls(host, int(port), key, session_timeout_s,
                   token=read_token(token_file) if token_file else None)


def read_token(path: str | Path) -> str:
    """The token in an ``edgecc-run serve`` token file (its first line)."""
    try:
        token = Path(path).read_text().split("\n", 1)[0].strip()
    except OSError as e:
        raise EdgeccError(f"cannot read the RPC token file '{path}': {e.strerror}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise EdgeccError(f"RPC token file '{path}' does not hold a token (16+ characters, "
                          "no spaces)")
    return token
