"""Weights & Biases: one run per trial, grouped by study, epoch as the step metric.

Online when credentials exist and WANDB_MODE allows; otherwise offline under the study folder,
never waiting on a network. `read_offline_run` reads an offline run's history back (wandb has no
public reader for `.wandb` files).
"""
from __future__ import annotations

import netrc
import os
import struct
from pathlib import Path
from typing import Any

from study import layout

DEFAULT_PROJECT = "prunestudy"
EPOCH_HOOK = "study.tracking.define_epoch_step"


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = netrc.netrc().authenticators("api.wandb.ai")
        return bool(host and host[2])
    except (OSError, netrc.NetrcParseError):
        return False


def configure(study_dir: Path) -> tuple[str, dict[str, str]]:
    """Choose the W&B mode before Ray starts; returns (mode, env vars the logging actors need).
    Runs offline without credentials so nothing ever waits on the network."""
    if os.environ.get("WANDB_MODE") not in ("online", "offline", "disabled"):
        os.environ["WANDB_MODE"] = "online" if has_credentials() else "offline"
    env = {"WANDB_MODE": os.environ["WANDB_MODE"], "WANDB_PROCESS_RUN_INFO_HOOK": EPOCH_HOOK,
           "WANDB_SILENT": "true", "WANDB_DIR": str(study_dir)}
    os.environ.update(env)
    return os.environ["WANDB_MODE"], env


def define_epoch_step(run: Any) -> None:
    """Called by Ray's W&B logging actor on each new run: plot every metric against `epoch`."""
    run.define_metric("epoch")
    run.define_metric("*", step_metric="epoch")


def logger_callback(study_dir: Path, study_name: str, method: str, dataset: str):
    from study import ray_compat

    return ray_compat.wandb_logger_callback_class()(
        project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), group=study_name,
        tags=[method, dataset], dir=str(study_dir.resolve()), job_type="trial")


def offline_runs(study_dir: Path) -> list[Path]:
    return sorted(layout.wandb_dir(study_dir).glob("offline-run-*"))


# --- reading offline runs: wandb's LevelDB-style log of protobuf `Record`s ---------------------
_BLOCK = 32768
_HEADER = 7  # crc32 (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
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
    import json

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
