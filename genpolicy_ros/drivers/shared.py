"""Lock-protected shared memory between the driver node and its control processes.

The 1 kHz loop must never block on the node (a full pipe, a slow reader), so high-rate data
(state out, command in) and rare status text live in shared memory that either side overwrites
and reads whenever it likes. Requests with replies go over a ``multiprocessing`` pipe.
Both classes are handed to the child as ``Process`` arguments (spawn pickles them then).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np


class SharedRecord:
    """Named float64 fields (scalars or vectors) in one shared array, guarded by one lock."""

    def __init__(self, ctx: Any, fields: Sequence[Tuple[str, int]]) -> None:
        self.fields = tuple((str(n), int(s)) for n, s in fields)
        self._size = sum(size for _, size in self.fields)
        self._buf = ctx.RawArray('d', self._size)
        self._lock = ctx.Lock()
        self._init_views()

    def _init_views(self) -> None:
        self._view = np.frombuffer(self._buf, dtype=np.float64)
        self._slices: Dict[str, slice] = {}
        offset = 0
        for name, size in self.fields:
            self._slices[name] = slice(offset, offset + size)
            offset += size

    def __getstate__(self) -> Dict[str, Any]:
        return {'fields': self.fields, 'size': self._size, 'buf': self._buf, 'lock': self._lock}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.fields, self._size = state['fields'], state['size']
        self._buf, self._lock = state['buf'], state['lock']
        self._init_views()

    def write(self, block: bool = True, **values: Any) -> bool:
        """Set the named fields (scalars or array-likes of the field's size) atomically.

        ``block=False`` never waits: if the other side holds the lock the write is skipped and
        False returned. The real-time loop writes and reads this way, so a preempted node
        process holding the lock can never stall it (priority inversion).
        """
        if not self._lock.acquire(block):
            return False
        try:
            for name, value in values.items():
                self._view[self._slices[name]] = value
        finally:
            self._lock.release()
        return True

    def read(self, block: bool = True) -> Optional[Dict[str, Any]]:
        """Return a consistent copy of every field (floats for size 1, arrays otherwise).

        ``block=False``: None instead of waiting for the lock.
        """
        if not self._lock.acquire(block):
            return None
        try:
            data = self._view.copy()
        finally:
            self._lock.release()
        out: Dict[str, Any] = {}
        for name, size in self.fields:
            part = data[self._slices[name]]
            out[name] = float(part[0]) if size == 1 else part
        return out

    def get(self, name: str) -> Any:
        """Return one field (float for size 1, a copied array otherwise)."""
        with self._lock:
            part = self._view[self._slices[name]].copy()
        return float(part[0]) if part.size == 1 else part


class SharedText:
    """A small JSON document in shared memory with a change counter."""

    def __init__(self, ctx: Any, capacity: int = 8192) -> None:
        self._buf = ctx.RawArray('c', capacity)
        self._seq = ctx.RawValue('q', 0)
        self._lock = ctx.Lock()

    def write(self, doc: Dict[str, Any], block: bool = True) -> bool:
        """Replace the document (every value cut to 200 characters if it does not fit).

        ``block=False`` skips the write (returns False) rather than wait for the lock.
        """
        data = json.dumps(doc).encode('utf-8')
        if len(data) >= len(self._buf):
            doc = {k: str(v)[:200] for k, v in doc.items()}
            data = json.dumps(dict(doc, truncated=True)).encode('utf-8')
            if len(data) >= len(self._buf):
                data = json.dumps({'truncated': True}).encode('utf-8')
        if not self._lock.acquire(block):
            return False
        try:
            self._buf.value = data
            self._seq.value += 1
        finally:
            self._lock.release()
        return True

    def read(self) -> Tuple[int, Dict[str, Any]]:
        """Return ``(change counter, document)``; an empty dict before the first write."""
        with self._lock:
            seq, data = self._seq.value, self._buf.value
        try:
            return seq, (json.loads(data.decode('utf-8')) if data else {})
        except ValueError:
            return seq, {}

    @property
    def seq(self) -> int:
        """Return the change counter."""
        return int(self._seq.value)
