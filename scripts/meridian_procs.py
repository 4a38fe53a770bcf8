"""Small helpers shared by the scripts that drive `meridian` processes and read what they write
(scripts/demo.py, bench/diloco/quality.py, tests/integration/diloco_test.py): the run token,
the coordinator's listening address, the "outer" lines of a node's metrics.jsonl, a JSON-lines
file. Standard library only."""
import json
import os
import re
import time


def write_token(path, nbytes=24):
    """A fresh random run token (hex), as `meridian coordinator --token-file` reads it."""
    with open(path, "w") as f:
        f.write(os.urandom(nbytes).hex() + "\n")
    return path


def read_text(path):
    """The file's text so far ("" while it does not exist yet)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def json_lines(path):
    """Every complete JSON line of a file that may still be being written."""
    records = []
    for line in read_text(path).splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return records


def outer_rounds(metrics_path):
    """A node's "outer" metrics lines by round (a round logged twice keeps its last line)."""
    return {j["round"]: j for j in json_lines(metrics_path) if j.get("type") == "outer"}


def coordinator_address(log_path, proc, timeout_s=30):
    """HOST:PORT from the coordinator's "listening on" line, or None if it exits or takes longer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = re.search(r"meridian coordinator listening on (\S+)", read_text(log_path))
        if m:
            return m.group(1)
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None
