# `fineport bench`'s chdb reference (native_chdb.rs runs it with -c and
# the job as JSON on stdin). Loads DuckDB's CSV file into a chdb session
# table (ENGINE = Memory, untimed), then times each query (a SELECT … INTO
# OUTFILE … FORMAT CSVWithNames, so ClickHouse writes the CSV file itself)
# `runs` times. Prints one JSON object a line: the ClickHouse version, the
# loaded rows, then one line a run with its seconds, bytes and rows (data
# rows of the file: no value holds a line break, so lines - 1).
import json
import os
import sys
import time

import chdb
from chdb import session

job = json.load(sys.stdin)
out = job["out"]


def emit(**fields):
    print(json.dumps(fields), flush=True)


def scalar(s, sql):
    return s.query(sql, "TabSeparated").bytes().decode().strip()


def data_rows(path):
    lines = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 24)
            if not chunk:
                break
            lines += chunk.count(b"\n")
    return max(lines - 1, 0)


s = session.Session()
try:
    emit(version=scalar(s, "SELECT version()"), chdb=chdb.__version__)
    s.query(job["load"])
    emit(loaded_rows=int(scalar(s, "SELECT count() FROM t")))
    for i, sql in enumerate(job["queries"]):
        for _ in range(job["runs"]):
            started = time.perf_counter()
            s.query(sql)
            seconds = time.perf_counter() - started
            size = os.path.getsize(out)
            rows = data_rows(out)
            os.remove(out)
            emit(query=i, seconds=seconds, bytes=size, rows=rows)
finally:
    s.close()
