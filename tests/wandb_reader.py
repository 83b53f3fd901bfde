"""Reading W&B offline runs back, for the tests: wandb 0.31 has no public reader for its `.wandb`
files, a LevelDB-style log of protobuf `Record`s."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from study import layout


def offline_runs(study_dir: Path) -> list[Path]:
    """A study's offline run folders, sorted."""
    return sorted(layout.wandb_dir(study_dir).glob("offline-run-*"))


_BLOCK = 32768
_HEADER = 7  # crc32 (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
    """The payload of every record of a `.wandb` file, in order (records span blocks in chunks)."""
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, chunks = 7, []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer too short for a header: padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left
            continue
        payload = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            chunks = [payload]
        elif kind == _MIDDLE:
            chunks.append(payload)
        elif kind == _LAST:
            yield b"".join(chunks + [payload])
            chunks = []


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """{'config': {...}, 'history': [{metric: value}, ...], 'tags': [...], 'group': str} of an
    offline run folder (`wandb/offline-run-*`)."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = list(Path(run_dir).glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"no .wandb file in {run_dir}")
    out: dict[str, Any] = {"config": {}, "history": [], "tags": [], "group": None}
    for raw in _records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in rec.history.item})
        elif kind == "run":
            out["tags"] = list(rec.run.tags)
            out["group"] = rec.run.run_group
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
    return out
