"""psycopg2 against Silo's endpoint, for TestPsycopg2 (psycopg2_test.go).

    psycopg2_client.py session DSN   runs the scenario, prints what it saw
    psycopg2_client.py connect DSN   prints how a connection attempt ended
    psycopg2_client.py idle DSN      connects, prints "connected", waits for
                                     a line on stdin, then runs SELECT 1 and
                                     prints how it ended

Each prints one JSON object last; the Go test asserts on it. A step that
raises ends the script with a traceback (and a failed test).
"""

import io
import json
import sys
import threading
import time

import psycopg2


def session(dsn):
    seen = {}
    conn = psycopg2.connect(dsn)
    seen["server_version"] = conn.server_version
    cur = conn.cursor()

    # Parameters are interpolated by psycopg2, quoted for the server's
    # standard_conforming_strings.
    cur.execute("SELECT %s::int + %s, %s, %s", (40, 2, "it's", "back\\slash"))
    seen["select"] = list(cur.fetchone())
    conn.commit()

    cur.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
    conn.commit()
    cur.executemany("INSERT INTO items VALUES (%s, %s)", [(1, "one"), (2, "two"), (3, "three")])
    seen["executemany_rowcount"] = cur.rowcount
    conn.commit()

    cur.execute("INSERT INTO items VALUES (4, 'four')")
    conn.rollback()
    cur.execute("SELECT count(*) FROM items")
    seen["after_rollback"] = cur.fetchone()[0]
    conn.commit()

    # COPY both ways, larger than the endpoint's 64 KiB buffers.
    rows = "".join("%d\tname-%05d\n" % (i, i) for i in range(100, 10100))
    cur.copy_expert("COPY items FROM STDIN", io.StringIO(rows))
    seen["copy_in_rowcount"] = cur.rowcount
    conn.commit()
    out = io.StringIO()
    cur.copy_expert("COPY (SELECT id, name FROM items WHERE id >= 100 ORDER BY id) TO STDOUT", out)
    conn.commit()
    seen["copy_out_matches"] = out.getvalue() == rows
    seen["copy_out_bytes"] = len(out.getvalue())

    # An error fails the transaction; the connection goes on.
    try:
        cur.execute("INSERT INTO items VALUES (1, 'again')")
    except psycopg2.Error as e:
        seen["duplicate_code"] = e.pgcode
    conn.rollback()

    # A cancel from another thread ends the statement, not the session.
    timer = threading.Timer(0.5, conn.cancel)
    start = time.monotonic()
    timer.start()
    try:
        cur.execute("SELECT pg_sleep(20)")
    except psycopg2.Error as e:
        seen["cancel_code"] = e.pgcode
    timer.join()
    seen["cancel_seconds"] = time.monotonic() - start
    conn.rollback()
    cur.execute("SELECT 1")
    seen["after_cancel"] = cur.fetchone()[0]
    conn.commit()

    # client_encoding and TimeZone follow the session to another server
    # connection: a second client holds the one just used.
    conn.set_client_encoding("LATIN1")
    cur.execute("SET TimeZone = 'Asia/Tokyo'")
    conn.commit()
    cur.execute("SELECT pg_backend_pid()")
    seen["pid_before"] = cur.fetchone()[0]
    conn.commit()
    holder = psycopg2.connect(dsn)
    hcur = holder.cursor()
    hcur.execute("SELECT pg_backend_pid()")  # opens a transaction: held
    seen["pid_holder"] = hcur.fetchone()[0]
    cur.execute("SELECT pg_backend_pid(), current_setting('client_encoding'), current_setting('TimeZone'), %s",
                ("caf\u00e9",))
    pid, encoding, tz, word = cur.fetchone()
    conn.commit()
    holder.rollback()
    holder.close()
    seen.update(pid_after=pid, encoding=encoding, timezone=tz, word=word, conn_encoding=conn.encoding)

    conn.close()
    return seen


def connect(dsn):
    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.Error as e:
        # libpq gives no SQLSTATE for a refused connection: pgcode is
        # None, and the message is the server's FATAL.
        return {"connected": False, "pgcode": e.pgcode, "message": str(e)}
    conn.close()
    return {"connected": True}


def idle(dsn):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    print("connected", flush=True)
    sys.stdin.readline()
    try:
        conn.cursor().execute("SELECT 1")
    except psycopg2.Error as e:
        # A FATAL ends the connection, and libpq then reports the lost
        # connection, without the FATAL's SQLSTATE (as with PostgreSQL's
        # own FATALs): pgcode is None.
        return {"connected": not conn.closed, "pgcode": e.pgcode, "message": str(e)}
    return {"connected": not conn.closed}


if __name__ == "__main__":
    mode, dsn = sys.argv[1], sys.argv[2]
    result = {"session": session, "connect": connect, "idle": idle}[mode](dsn)
    print(json.dumps(result))
