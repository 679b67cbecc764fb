#!/usr/bin/env python3
"""bench/stamp.py: the clock at the consumer's end of a pipeline.

Reads message values, one JSON document per line, from stdin (kcat -C -u
-f '%s\\n'), as they arrive, and writes for each "run xid payment seconds":
the benchmark run and transaction id the event carries, its sequence
number, and the wall-clock time (CLOCK_REALTIME, the clock PostgreSQL
stamps commits with) at which the line was read.  A value that is a JSON
string holding JSON (a converter that quoted the payload) is unwrapped.
Lines that are not benchmark events are skipped.

stdin is read in chunks of whatever has arrived, and every line a read
completes is stamped with that read's time: that is when the consumer had
it.  Reading, stamping and writing line by line instead cost about 5 us a
line, which capped what a fast pipeline could be measured at (near 200,000
events/s on two cores) and took that CPU from the pipeline under test.

Usage: kcat -C ... | bench/stamp.py >stamps.tsv
"""
import json
import os
import sys
import time


def event_row(value, seen):
    """The output line for one decoded message value, or None if it is no event."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, dict) or "run" not in value or "xid" not in value:
        return None
    return f"{value['run']} {value['xid']} {value.get('payment', 0)} {seen:.6f}\n"


def decode(lines):
    """The values of lines: decoded in one call, or line by line (None for
    a line that is not JSON) when one of them is not."""
    try:
        return json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        values = []
        for line in lines:
            try:
                values.append(json.loads(line))
            except ValueError:
                values.append(None)
        return values


def main():
    source = sys.stdin.fileno()
    out = sys.stdout
    partial = b""
    while True:
        chunk = os.read(source, 1 << 16)
        seen = time.time()
        if not chunk:
            lines = [partial] if partial.strip() else []
        else:
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
        values = decode([line for line in lines if line.strip()])
        rows = [row for row in (event_row(value, seen) for value in values) if row]
        if rows:
            out.write("".join(rows))
            out.flush()
        if not chunk:
            break


if __name__ == "__main__":
    main()
