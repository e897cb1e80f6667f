"""PostgreSQL connections with a deadline: every store built on it fails fast and recovers at once.

A table's store hands this class small functions of a connection: ``read`` for queries, and
``write`` for one transaction. What every such function gets for free:

- **A bound.** Each call finishes within ``timeout`` seconds, whatever the server does: the
  wait for a free connection, connecting, and each statement count against one deadline. The
  server's ``statement_timeout`` stops slow statements; a watchdog shuts the socket of a call
  still waiting at its deadline, which is what ends the wait on a server that accepts
  connections but never answers (stopped, swapping, partitioned).
- **No backoff.** Connections are opened on demand, with no background reconnect schedule:
  the first call after the server is back connects and succeeds.
- **One retry on a lost connection.** Idle connections are checked before use; a call whose
  connection dies under it runs once more on a fresh one while time remains. Reads are safe
  to repeat. A write whose connection died before its ``COMMIT`` was sent was not applied
  and is simply run again; one that died during the ``COMMIT`` may have been applied, so it
  runs again with ``maybe_applied=True``, and must then treat "already done" as its success
  (an insert carries the id the store generated, a delete treats "already gone" as done).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import ConnStatus, TransactionStatus

from service.errors import StoreFull, StoreUnavailable

T = TypeVar("T")
Connection = psycopg.Connection[Any]

#: TCP keepalives find a dead peer behind an idle pooled connection (a host that vanished,
#: a NAT that forgot the flow) in about idle + interval * count seconds.
_KEEPALIVE_IDLE_S: Final = 10
_KEEPALIVE_INTERVAL_S: Final = 3
_KEEPALIVE_COUNT: Final = 3
#: How long the opening of the store keeps trying to reach the server (replicas and their
#: database often start together).
START_TIMEOUT: Final = 10.0
#: Defaults for those who open a pool without the settings (Settings has the served ones).
POOL_SIZE: Final = 10
TIMEOUT: Final = 2.0
_START_PAUSE_S: Final = 0.2


@dataclass(slots=True)
class _Attempt:
    """What one run of a write reached: past this point a lost connection leaves it unknown."""

    committing: bool = False


class Database:
    """A bounded pool of PostgreSQL connections, each call held to ``timeout`` seconds."""

    def __init__(
        self,
        conninfo: str,
        *,
        pool_size: int = POOL_SIZE,
        timeout: float = TIMEOUT,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.timeout = timeout
        self._conninfo = conninfo
        self._size = max(1, pool_size)
        self._slots = threading.BoundedSemaphore(self._size)
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._watchdog = _Watchdog()
        # Connecting runs on these threads so that a caller can stop waiting at its deadline
        # even below libpq's two-second floor on connect_timeout.
        self._connector = ThreadPoolExecutor(self._size, thread_name_prefix="store-connect")
        self._wait_for_server(start_timeout)

    # -- what stores call -----------------------------------------------------------------

    def read(self, query: Callable[[Connection], T]) -> T:
        """``query(conn)`` on an autocommit connection, run again once if the connection dies."""
        deadline = time.monotonic() + self.timeout
        try:
            return self._run(query, deadline)
        except _Lost:
            return self._run(query, deadline, retry=True)

    def write(
        self,
        change: Callable[[Connection, bool], T],
        *,
        unsure: str = "The database stopped answering while the write committed: it may "
        "or may not have been applied.",
        timeout: float | None = None,
    ) -> T:
        """``change(conn, maybe_applied)`` in one transaction, run again once if the connection
        dies; ``unsure`` is the 503's detail when neither run could tell whether it applied.

        ``timeout`` replaces the store's bound for this call (and its statements).
        """
        seconds = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + seconds
        first, second = _Attempt(), _Attempt()
        try:
            try:
                return self._run(_in_transaction(change, False, first, timeout), deadline)
            except _Lost:
                again = _in_transaction(change, first.committing, second, timeout)
                return self._run(again, deadline, retry=True)
        except StoreUnavailable as exc:
            if first.committing or second.committing:
                raise StoreUnavailable(unsure, reason=exc.reason) from None
            raise

    def ping(self) -> None:
        """Raise StoreUnavailable, saying why, unless the server answers a query in time."""
        self.read(lambda conn: conn.execute("SELECT 1").fetchall())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        self._connector.shutdown(wait=False, cancel_futures=True)
        self._watchdog.stop()

    # -- one attempt ----------------------------------------------------------------------

    def _run(self, work: Callable[[Connection], T], deadline: float, retry: bool = False) -> T:
        """``work`` on a connection, within ``deadline``.

        Raises _Lost when the connection died and time remains for another attempt (unless
        this is already that attempt), StoreUnavailable when the store cannot answer in time.
        """
        with self._connection(deadline) as conn:
            armed = self._watchdog.arm(conn, deadline)
            discard = False
            try:
                return work(conn)
            except pg_errors.DiskFull:
                raise StoreFull("The database is out of disk space; nothing was written.") from None
            except (psycopg.OperationalError, pg_errors.ReadOnlySqlTransaction) as exc:
                # A server that dropped one connection dropped them all; one that is read-only
                # is a standby (a failover under way): a fresh connection may reach the primary.
                discard = True
                self._drop_idle()
                if not retry and time.monotonic() < deadline:
                    raise _Lost from exc
                raise _unavailable(exc, deadline, self.timeout) from exc
            except psycopg.IntegrityError:
                raise  # the table's store knows what a taken name or id means
            except psycopg.Error as exc:
                raise _unavailable(exc, deadline, self.timeout) from exc
            finally:
                self._watchdog.disarm(armed)  # first: the watchdog may read the socket
                if discard:
                    conn.close()

    @contextlib.contextmanager
    def _connection(self, deadline: float) -> Iterator[Connection]:
        if self._closed:
            raise StoreUnavailable("The store is closed.", reason="the store is closed")
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise StoreUnavailable(
                f"All {self._size} connections to the database stayed busy for "
                f"{self.timeout:g} s; nothing was written.",
                reason=f"all {self._size} connections to PostgreSQL stayed busy",
            )
        try:
            conn = self._take_idle() or self._connect(deadline)
            try:
                yield conn
            finally:
                self._give_back(conn)
        finally:
            self._slots.release()

    def _take_idle(self) -> Connection | None:
        """The most recently used idle connection that still looks alive, else None."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            if _alive(conn):
                return conn
            conn.close()

    def _give_back(self, conn: Connection) -> None:
        healthy = not conn.closed and conn.info.transaction_status is TransactionStatus.IDLE
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _connect(self, deadline: float) -> Connection:
        future = self._connector.submit(self._open)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()
            future.add_done_callback(_close_late)
            raise StoreUnavailable(
                f"Connecting to the database took longer than {self.timeout:g} s; "
                "nothing was written.",
                reason=f"PostgreSQL did not answer within {self.timeout:g} s",
            ) from None
        except psycopg.Error as exc:
            raise _unavailable(exc, deadline, self.timeout) from exc

    def _open(self) -> Connection:
        bound_ms = max(1, round(self.timeout * 1000))
        given = str(conninfo_to_dict(self._conninfo).get("options") or "")
        return psycopg.connect(
            self._conninfo,
            # Autocommit: reads cost one round trip; writes open their own transaction.
            autocommit=True,
            connect_timeout=max(2, math.ceil(self.timeout)),
            # UTC: created_at reads back the same on every replica, whatever the server's zone.
            # statement_timeout: the server gives up on a statement nobody waits for any more.
            options=f"{given} -c TimeZone=UTC -c statement_timeout={bound_ms}".strip(),
            keepalives=1,
            keepalives_idle=_KEEPALIVE_IDLE_S,
            keepalives_interval=_KEEPALIVE_INTERVAL_S,
            keepalives_count=_KEEPALIVE_COUNT,
            # Sent data unacknowledged this long means the peer is gone (ignored off Linux).
            tcp_user_timeout=bound_ms,
            application_name="spatial-dropout",
        )

    def _wait_for_server(self, start_timeout: float) -> None:
        """Connect once, retrying until ``start_timeout``; the store is unusable otherwise."""
        give_up = time.monotonic() + start_timeout
        while True:
            try:
                self.ping()
                return
            except StoreUnavailable:
                if time.monotonic() + _START_PAUSE_S >= give_up:
                    self.close()
                    raise
            time.sleep(_START_PAUSE_S)


class _Lost(Exception):
    """The connection died under a call that may run once more."""


def _in_transaction(
    change: Callable[[Connection, bool], T],
    maybe_applied: bool,
    attempt: _Attempt,
    timeout: float | None,
) -> Callable[[Connection], T]:
    def work(conn: Connection) -> T:
        with conn.transaction():
            if timeout is not None:
                ms = max(1, round(timeout * 1000))
                conn.execute(f"SET LOCAL statement_timeout = {ms}")
            result = change(conn, maybe_applied)
            attempt.committing = True  # leaving the block sends COMMIT
        return result

    return work


def _alive(conn: Connection) -> bool:
    """Whether an idle connection may be used: nothing may arrive on an idle connection but
    the server's goodbye (a terminated backend, a shutdown) or the end of the stream."""
    if conn.closed or conn.pgconn.status != ConnStatus.OK:
        return False
    if conn.info.transaction_status is not TransactionStatus.IDLE:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable


def _close_late(future: Future[Connection]) -> None:
    """Close a connection that arrived after its caller gave up."""
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def _unavailable(exc: psycopg.Error, deadline: float, timeout: float) -> StoreUnavailable:
    """A StoreUnavailable whose detail says why, in words safe to show any client."""
    if isinstance(exc, pg_errors.ConnectionTimeout) or time.monotonic() >= deadline:
        why = f"did not answer within {timeout:g} s"
    elif isinstance(exc, pg_errors.CannotConnectNow):
        why = "is starting up, shutting down or recovering"
    elif isinstance(exc, pg_errors.AdminShutdown):
        why = "is shutting down or ended the connection"
    elif isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        why = "is read-only (a standby: a failover may be under way)"
    elif isinstance(exc, pg_errors.QueryCanceled):
        why = f"did not finish a statement within {timeout:g} s"
    elif isinstance(exc, psycopg.OperationalError):
        why = "refused or lost the connection"
    else:
        why = f"failed ({type(exc).__name__})"
    return StoreUnavailable(
        f"The database (PostgreSQL) {why}; nothing was written.", reason=f"PostgreSQL {why}"
    )


@dataclass(order=True)
class _Alarm:
    deadline: float
    seq: int
    conn: Connection | None = field(compare=False)


class _Watchdog:
    """One thread that shuts the socket of any connection still busy at its deadline.

    Shutting the socket (not closing the descriptor, which libpq owns) makes the blocked call
    see the end of the stream at once and fail as a lost connection.
    """

    def __init__(self) -> None:
        self._alarms: list[_Alarm] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def arm(self, conn: Connection, deadline: float) -> _Alarm:
        alarm = _Alarm(deadline, next(self._seq), conn)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="store-watchdog", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._alarms, alarm)
            if self._alarms[0] is alarm:
                self._cond.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> None:
        with self._cond:  # once this returns, the alarm can no longer touch the connection
            alarm.conn = None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while not self._stopped:
                while self._alarms and self._alarms[0].conn is None:
                    heapq.heappop(self._alarms)
                if not self._alarms:
                    self._cond.wait()
                    continue
                wait = self._alarms[0].deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                alarm = heapq.heappop(self._alarms)
                if alarm.conn is not None:
                    _shut(alarm.conn)


def _shut(conn: Connection) -> None:
    with contextlib.suppress(OSError, psycopg.Error):
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
