"""Content fingerprints, on a helper thread for big files so the loop keeps serving events,
results and watchdog pings while a multi-gigabyte file is read.

``fingerprint(path, sig)`` gives (fingerprint, None) or, for a file that cannot be read, a
per-version marker and the error. ``submit`` starts one off the loop; ``results()`` gives the
finished ones back on the loop (the thread never logs: a log call is not safe from every
thread).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

Sig = tuple[int, int]  # (size, mtime_ns): one version of a file
Hashed = tuple[str, str | None]  # (fingerprint, error)


class Hasher:
    def __init__(self, fingerprint: Callable[[str], str], wake: Callable[[], None]) -> None:
        self._fingerprint = fingerprint
        self.wake = wake
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="insightron-hash")
        self.busy: set[str] = set()
        self.done: queue.SimpleQueue[tuple[str, Sig, Hashed]] = queue.SimpleQueue()

    def __contains__(self, path: str) -> bool:
        return path in self.busy

    def __len__(self) -> int:
        return len(self.busy)

    def fingerprint(self, path: str, sig: Sig) -> Hashed:
        try:
            return self._fingerprint(path), None
        except OSError as exc:
            return f"unreadable:{sig[0]}:{sig[1]}", exc.strerror or str(exc)

    def submit(self, path: str, sig: Sig) -> bool:
        """Fingerprint ``path`` off the loop; False if it is being hashed already."""
        if path in self.busy:
            return False
        self.busy.add(path)
        self.pool.submit(self._run, path, sig)
        return True

    def _run(self, path: str, sig: Sig) -> None:
        self.done.put((path, sig, self.fingerprint(path, sig)))
        self.wake()

    def results(self) -> Iterator[tuple[str, Sig, Hashed]]:
        while True:
            try:
                path, sig, hashed = self.done.get_nowait()
            except queue.Empty:
                return
            self.busy.discard(path)
            yield path, sig, hashed

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
