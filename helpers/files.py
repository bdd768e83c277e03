"""Small file tools every writer and reader shares: atomic replace, JSON in and out, sha256."""
import hashlib
import json
import os
import secrets
from pathlib import Path

from helpers.params import CheckpointError


def atomic_write(path, write):
    """write(tmp) makes a new file beside path, then os.replace puts it in place. A process that has the old
    file mmap'd keeps the old bytes; rewriting in place would change its weights, or SIGBUS it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path, data):
    return atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))


def read_json(path, what):
    """A JSON object from path; CheckpointError naming the file (and `what` it should hold) otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e}); download it again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object ({what})")
    return data


def sha256(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
