#!/usr/bin/env python3
"""bench/stamp.py: the clock at the consumer's end of a pipeline.

Reads message values, one JSON document per line, from stdin (kcat -C -u
-f '%s\\n'), as they arrive, and writes for each "run xid payment seconds":
the benchmark run and transaction id the event carries, its sequence
number, and the wall-clock time (CLOCK_REALTIME, the clock PostgreSQL
stamps commits with) at which the line was read.  A value that is a JSON
string holding JSON (a converter that quoted the payload) is unwrapped.
Lines that are not benchmark events are skipped.

Usage: kcat -C ... | bench/stamp.py >stamps.tsv
"""
import json
import sys
import time


def main():
    source = sys.stdin.buffer
    out = sys.stdout
    while True:
        line = source.readline()
        if not line:
            break
        seen = time.time()
        try:
            value = json.loads(line)
            if isinstance(value, str):
                value = json.loads(value)
        except ValueError:
            continue
        if not isinstance(value, dict) or "run" not in value or "xid" not in value:
            continue
        out.write(f"{value['run']} {value['xid']} {value.get('payment', 0)} {seen:.6f}\n")
        out.flush()


if __name__ == "__main__":
    main()
