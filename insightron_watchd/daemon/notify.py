"""The sd_notify protocol, spoken directly: one datagram to ``$NOTIFY_SOCKET`` per message.

No dependency: systemd's protocol is a newline-separated ``KEY=value`` datagram on a Unix
socket (an abstract one when the name starts with ``@``).
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_s: float | None = None
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str | int) -> bool:
        if not self.address:
            return False
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, addr)
            return True
        except OSError:
            return False

    def ping_interval_s(self) -> float | None:
        """Half the watchdog interval, as systemd recommends."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
