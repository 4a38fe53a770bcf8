"""Small helpers shared by the scripts that drive `meridian` processes and read what they write
(scripts/demo.py, bench/diloco/quality.py, tests/integration/diloco_test.py, tests/chaos/chaos.py):
the run token, the coordinator's listening address, the "outer" lines of a node's metrics.jsonl,
a JSON-lines file, the end of a test run. Standard library only."""
import json
import os
import re
import subprocess
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


def license_shards(binary, work):
    """Token shards (work/shards/{train,val}) of two license texts that every Debian system has,
    one document per paragraph: the small corpus of the real-process tests."""
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as out:
        for path in ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"):
            with open(path) as f:
                for para in f.read().split("\n\n"):
                    out.write(para.strip() + "\n%\n")
    subprocess.run([binary, "tokenize", "--input", corpus, "--output", os.path.join(work, "shards"), "--val-fraction", "0.05",
                    "--doc-separator", "%"], check=True, stdout=subprocess.DEVNULL)


def stop_all(procs, work, failed, tail_chars=3000):
    """The end of a real-process test: kills what still runs and, when something failed, prints
    the tail of every log in `work`."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    if failed:
        for name in sorted(os.listdir(work)):
            if name.endswith(".log"):
                print("---- %s (tail)" % name)
                print(read_text(os.path.join(work, name))[-tail_chars:])
