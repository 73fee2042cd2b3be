"""Which producer process is which: the name a process registers in its fleet.

Leases carry the PRODUCER_ID (the host name by default), so that a producer restarted after
a crash takes its mailboxes back at once. The registry carries the process: two processes
sharing an id (two on one host without PRODUCER_ID) each count toward the fair share, and
each knows the other is alive and not an earlier life of its own (issue 18 §10).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Instance:
    """One producer process: its PRODUCER_ID, host name, pid and a nonce, as registered."""

    producer_id: str
    host: str
    pid: int
    nonce: str

    @classmethod
    def of_this_process(cls, producer_id: str) -> Instance:
        return cls(producer_id=producer_id, host=socket.gethostname(), pid=os.getpid(), nonce=uuid.uuid4().hex[:8])

    @classmethod
    def parse(cls, text: str) -> Instance | None:
        parts = text.rsplit("#", 3)
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(producer_id=parts[0], host=parts[1], pid=int(parts[2]), nonce=parts[3])

    def __str__(self) -> str:
        return f"{self.producer_id}#{self.host}#{self.pid}#{self.nonce}"

    def shares_id_with(self, other: Instance) -> bool:
        """`other` is another live process with our id: not us, and not an earlier life of
        ours on this host (its pid gone, or ours now: a restarted container)."""
        if other == self or other.producer_id != self.producer_id:
            return False
        return not (other.host == self.host and (other.pid == self.pid or not _pid_alive(other.pid)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
