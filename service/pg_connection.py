"""Connections to the shared registry's PostgreSQL, and what callers see while it is down.

``PgConnections`` lends autocommit connections for one transaction each and keeps a few idle
ones; a connection idle for a while is checked before it is lent, so the first call after a
database restart does not fail on a dead socket. Any connection failure becomes
``RegistryUnavailable``: an ``APIError`` 503 in the API's error format (admin calls answer it
while the database is down, and work again once it is back, without a restart).

``listen`` keeps a separate connection that ``LISTEN``s to a channel and calls back on every
notification batch and at least every ``interval`` seconds (the periodic re-sync), reconnecting
with backoff after failures; a reconnection also calls back, since notifications sent while it was
away are lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from lethe.service.errors import SERVER, APIError

logger = logging.getLogger("lethe.registry")
CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 30_000
IDLE_CHECK_AFTER_S = 1.0
MAX_IDLE = 4
RETRY_AFTER_S = "2"
STOP_POLL_S = 0.5
LISTEN_BACKOFF_MAX_S = 5.0  # longest wait of a listener between reconnection attempts


class RegistryUnavailable(APIError):
    """The shared registry's database cannot be reached (or gave up on a transaction: a deadlock, a timeout):
    a 503 the client may retry."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "The forget-set registry's database is unavailable; retry shortly.",
            SERVER,
            None,
            "registry_unavailable",
            {"Retry-After": RETRY_AFTER_S},
        )


DATABASE_DOWN = (psycopg.OperationalError, psycopg.InterfaceError)


def connect(url: str) -> psycopg.Connection:
    """A new autocommit connection (``RegistryUnavailable`` if the server cannot be reached)."""
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            application_name="lethe",
        )
    except DATABASE_DOWN as exc:
        raise RegistryUnavailable() from exc


class PgConnections:
    """A small pool of autocommit connections to one database, each lent for one transaction."""

    def __init__(self, url: str):
        self.url = url
        self._idle: list[tuple[psycopg.Connection, float]] = []
        self._lock = threading.Lock()
        self._closed = False

    def _checkout(self) -> psycopg.Connection:
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if conn.closed or conn.broken:
                continue
            if time.monotonic() - since < IDLE_CHECK_AFTER_S:
                return conn
            try:
                conn.execute("SELECT 1")
                return conn
            except DATABASE_DOWN:
                conn.close()
        return connect(self.url)

    def _checkin(self, conn: psycopg.Connection) -> None:
        if conn.closed or conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
            return
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A connection inside ``BEGIN``/``COMMIT`` (rolled back on an exception)."""
        conn = self._checkout()
        try:
            with conn.transaction():
                yield conn
        except DATABASE_DOWN as exc:
            conn.close()
            raise RegistryUnavailable() from exc
        except BaseException:
            self._checkin(conn)
            raise
        self._checkin(conn)

    def close(self) -> None:
        """Close the idle connections; lent ones close when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


def listen(url: str, channel: str, on_change: Callable[[], None], stop: threading.Event, interval: float) -> None:
    """Call ``on_change`` after notifications on ``channel`` and every ``interval`` s until ``stop`` is set."""
    backoff = 0.2
    while not stop.is_set():
        try:
            conn = connect(url)
        except RegistryUnavailable:
            stop.wait(backoff)
            backoff = min(backoff * 2, LISTEN_BACKOFF_MAX_S)
            continue
        try:
            with conn:
                conn.execute(f"LISTEN {channel}")
                backoff = 0.2
                _call(on_change)  # whatever changed while this connection did not listen
                synced = time.monotonic()
                while not stop.is_set():
                    # Short waits, so that ``stop`` is seen within STOP_POLL_S.
                    changed = list(conn.notifies(timeout=STOP_POLL_S, stop_after=1))
                    if changed or time.monotonic() - synced >= interval:
                        list(conn.notifies(timeout=0))  # the rest already queued: one re-sync covers them
                        _call(on_change)
                        synced = time.monotonic()
        except DATABASE_DOWN as exc:
            logger.warning("registry listener lost its connection (%s); reconnecting", type(exc).__name__)
            stop.wait(backoff)


def _call(on_change: Callable[[], None]) -> None:
    try:
        on_change()
    except RegistryUnavailable:
        logger.warning("registry unreachable during a re-sync; keeping the forget sets already live")
    except Exception as exc:  # a failed re-sync must not end the listener
        logger.error("registry re-sync failed: %s", type(exc).__name__)
        logger.debug("re-sync failure", exc_info=exc)
