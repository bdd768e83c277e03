"""Measuring tools for bench/: peak memory of this process (a sampling thread), a memory cgroup with a hard
limit for a child process, the page cache of one file (drop, warm, count), wall time."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def proc_status():
    """/proc/self/status memory lines in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                out[k] = int(v.split()[0]) * 1024
    return out


class PeakRss:
    """Thread that samples RssAnon/RssFile; optional progress file gets the running peak (survives a kill)."""

    def __init__(self, every=0.005, progress=None):
        self.every, self.progress, self.stage = every, progress, "start"
        self.peak_anon = self.peak_file = 0
        self._stop = threading.Event()

    def sample(self):
        s = proc_status()
        self.peak_anon = max(self.peak_anon, s.get("RssAnon", 0))
        self.peak_file = max(self.peak_file, s.get("RssFile", 0))

    def run(self):
        n = 0
        while not self._stop.is_set():
            self.sample()
            n += 1
            if self.progress and n % 20 == 0:
                with open(self.progress, "a") as f:
                    f.write(json.dumps({"stage": self.stage, "peak_anon": self.peak_anon,
                                        "anon": proc_status().get("RssAnon", 0)}) + "\n")
            self._stop.wait(self.every)

    def __enter__(self):
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.sample()

    def report(self):
        return {"peak_rss_anon": self.peak_anon, "peak_rss_file": self.peak_file,
                "vm_hwm": proc_status()["VmHWM"]}


def my_cgroup():
    """The memory cgroup line of /proc/self/cgroup (v1), else the v2 one."""
    lines = open("/proc/self/cgroup").read().splitlines()
    return next((s for s in lines if "memory" in s.split(":")[1].split(",")), lines[-1] if lines else None)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 3)


def parse_size(s):
    units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}
    s = s.strip().upper().rstrip("B").rstrip("I")
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


class MemoryCgroup:
    """A fresh memory cgroup below the one we run in, with a hard limit: v1 memory.limit_in_bytes or
    v2 memory.max. Children join it before exec; it is removed when they are done."""

    def __init__(self, limit, name):
        self.limit, self.v1 = limit, None
        for line in open("/proc/self/cgroup"):
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if "memory" in ctrls.split(","):
                self.v1, base = True, Path("/sys/fs/cgroup/memory") / path.lstrip("/")
                break
            if hid == "0" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
                self.v1, base = False, Path("/sys/fs/cgroup") / path.lstrip("/")
        if self.v1 is None:
            raise SystemExit("no memory cgroup found (neither v1 'memory' nor v2 with controllers); "
                             "run without --cap or under `systemd-run --scope -p MemoryMax=8G`")
        self.dir = base / name
        try:
            self.dir.mkdir()
            self.write("memory.limit_in_bytes" if self.v1 else "memory.max", str(limit))
        except OSError as e:
            raise SystemExit(f"cannot make a memory cgroup at {self.dir} ({e}); needs root (v1) or a delegated "
                             "v2 subtree. Instead run the whole benchmark capped, without --cap: "
                             "`systemd-run --scope -p MemoryMax=8G python -m bench.scale ...`") from None
        got = int(self.read("memory.limit_in_bytes" if self.v1 else "memory.max"))
        if got > limit:
            raise SystemExit(f"{self.dir}: limit reads back as {got}, not {limit}: the cap would not apply")

    def read(self, name):
        return (self.dir / name).read_text().strip()

    def write(self, name, value):
        (self.dir / name).write_text(value)

    def join(self):                      # runs in the child between fork and exec
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def stats(self):
        if self.v1:
            oom = dict(line.split() for line in self.read("memory.oom_control").splitlines())
            return {"cgroup_limit": int(self.read("memory.limit_in_bytes")),
                    "cgroup_max_usage": int(self.read("memory.max_usage_in_bytes")),
                    "cgroup_failcnt": int(self.read("memory.failcnt")),
                    "cgroup_oom_kills": int(oom.get("oom_kill", -1))}
        ev = dict(line.split() for line in self.read("memory.events").splitlines())
        peak = self.dir / "memory.peak"
        return {"cgroup_limit": int(self.read("memory.max")), "cgroup_oom_kills": int(ev.get("oom_kill", -1)),
                "cgroup_max_usage": int(peak.read_text()) if peak.exists() else None}

    def remove(self):
        for _ in range(50):
            try:
                self.dir.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        print(f"warning: could not remove {self.dir}; `rmdir` it once its processes are gone", file=sys.stderr)


def drop_cache(path):
    """Evict this file's pages from the page cache so a run starts cold (affects nothing else)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_cache(path):
    with open(path, "rb") as f:
        while f.read(1 << 26):
            pass


def cached_bytes(path):
    """Bytes of path in the page cache (util-linux fincore), or None."""
    try:
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(path)], capture_output=True, text=True)
        return int(out.stdout.split()[0])
    except (OSError, ValueError, IndexError):
        return None
