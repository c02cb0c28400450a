"""Read an offline wandb run back (wandb 0.31 writes it from Go; there is no Python reader).

A `.wandb` file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records,
each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)
holding a serialized `wandb_internal_pb2.Record`.
"""

import glob
import json
import struct
from dataclasses import dataclass, field


@dataclass
class OfflineRun:
    run_id: str = ""
    sweep_id: str = ""
    name: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None


def _records(blob: bytes):
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(blob):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", blob[pos : pos + 7])
        pos += 7
        if kind == 0:
            break
        buf += blob[pos : pos + length]
        pos += length
        if kind in (1, 4):
            yield buf
            buf = b""


def _key(item):
    return item.key or "/".join(item.nested_key)


def read_offline_run(wandb_dir) -> OfflineRun:
    """The one offline run under `wandb_dir`/wandb."""
    (run,) = read_offline_runs(wandb_dir)
    return run


def read_offline_runs(wandb_dir) -> list[OfflineRun]:
    """Every offline run under `wandb_dir`/wandb, in the order their folders sort."""
    return [
        _read(path) for path in sorted(glob.glob(f"{wandb_dir}/wandb/offline-run-*/run-*.wandb"))
    ]


def _read(path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    out = OfflineRun()
    with open(path, "rb") as f:
        blob = f.read()
    for data in _records(blob):
        r = pb.Record()
        r.ParseFromString(data)
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.run_id, out.sweep_id = r.run.run_id, r.run.sweep_id
            out.name = r.run.display_name or out.name
            out.tags = list(r.run.tags) or out.tags
            for item in r.run.config.update:
                out.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in r.config.update:
                out.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            for item in r.summary.update:
                out.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "exit":
            out.exit_code = r.exit.exit_code
    # wandb stores config values as {"value": v}
    out.config = {
        k: (v["value"] if isinstance(v, dict) and "value" in v else v)
        for k, v in out.config.items()
    }
    return out
