"""Seeds taken from an earlier study's ``results.json`` instead of being run again.

A seed's work folder (its checkpoints and run reports) may be lost while its measured values
survive in the ``results.json`` the study wrote. ``--from-record FILE [FILE ...]`` lets a later
invocation add new seeds to those values (several files: seeds run by separate invocations, on
other days or machines; a seed two files hold is taken from the first): the recorded seeds'
per-seed test values, silhouettes, pre-training diagnostics and run times are read back, after
checking that the record was made with the same budget and the same downstream data, and the
output says which seeds came from where.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .plan import METHODS, MODES, TASKS, Budget
from .stats import Measurements


@dataclass(frozen=True)
class Record:
    """The recorded seeds of an earlier ``results.json`` and where they came from."""

    path: Path
    seeds: list[int]
    date: str
    command: str
    device: str
    per_seed: dict  # [task][mode][method][seed] -> value
    sil_seed: dict  # [method][seed] -> silhouette
    diag: list[dict]
    run_walls: dict[str, float]

    def provenance(self) -> dict:
        """What results.json says about the record: its file, seeds, date, command and device."""
        return {
            "path": str(self.path),
            "seeds": self.seeds,
            "date": self.date,
            "command": self.command,
            "device": self.device,
        }


def _value(v) -> float:
    return float("nan") if v is None else float(v)


def _comparable(config: dict) -> dict:
    """A budget's settings without its free-text note (reworded notes do not change a run)."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k != "note"}


def load_record(path: Path, budget: Budget, seeds: list[int], data_seeds: dict) -> Record:
    """Read the seeds of ``seeds`` that ``path`` holds, refusing a record of another budget or data.

    Raises ``SystemExit`` with the file and the first setting that differs when the record was
    made with another budget (other iterations, sizes, rates...) or other downstream data seeds,
    since its values would then not be comparable with the seeds run now.
    """
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))["meta"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--from-record {path}: not a readable study results.json ({e})") from e
    here = _comparable(dataclasses.asdict(budget))
    there = _comparable(meta.get("budget_config", {}))
    for k in sorted(set(here) | set(there)):
        if here.get(k) != there.get(k):
            raise SystemExit(
                f"--from-record {path}: made with another budget ({k} = {there.get(k)!r} there, "
                f"{here.get(k)!r} here); its seeds are not comparable: run them again instead"
            )
    if meta.get("data_seeds") != data_seeds:
        raise SystemExit(
            f"--from-record {path}: made with other downstream data (data seeds {meta.get('data_seeds')} "
            f"there, {data_seeds} here); run its seeds again instead"
        )
    taken = [s for s in seeds if s in meta.get("seeds", [])]
    per_seed = {
        t: {
            mode: {m: {s: _value(meta["per_seed"][t][mode][m].get(str(s))) for s in taken} for m in METHODS}
            for mode in MODES
        }
        for t in TASKS
    }
    sil = {m: {s: _value(meta["silhouette_per_seed"][m].get(str(s))) for s in taken} for m in METHODS}
    diag = [r for r in meta.get("pretrain_diagnostics", []) if r.get("seed") in taken]
    walls = {k: v for k, v in meta.get("run_wall_s", {}).items() if any(k.startswith(f"seed{s}/") for s in taken)}
    return Record(
        path=Path(path),
        seeds=taken,
        date=str(meta.get("date", "?")),
        command=str(meta.get("command", "?")),
        device=str(meta.get("device", "?")),
        per_seed=per_seed,
        sil_seed=sil,
        diag=diag,
        run_walls=walls,
    )


def load_records(paths: list[Path], budget: Budget, seeds: list[int], data_seeds: dict) -> list[Record]:
    """``load_record`` for each file in order, each taking the asked seeds no earlier file supplied.

    Raises ``SystemExit`` naming a file that supplies none of them (a wrong file or a repeated
    one), since silently ignoring it would leave a seed the user meant to add unaccounted for.
    """
    records: list[Record] = []
    for path in paths:
        taken = {s for r in records for s in r.seeds}
        record = load_record(Path(path), budget, [s for s in seeds if s not in taken], data_seeds)
        if not record.seeds:
            raise SystemExit(
                f"--from-record {path}: holds none of the asked seeds {seeds} that the files before it did "
                "not already supply; drop it or ask for its seeds"
            )
        records.append(record)
    return records


def add_record(measured: Measurements, record: Record) -> None:
    """Put the record's per-seed values, silhouettes and run times into ``measured``."""
    for t in TASKS:
        for mode in MODES:
            for m in METHODS:
                measured.per_seed[t][mode][m].update(record.per_seed[t][mode][m])
    for m in METHODS:
        measured.sil_seed[m].update(record.sil_seed[m])
    measured.run_walls.update(record.run_walls)


def md_record(records: list[Record]) -> list[str]:
    """Which seeds were taken from earlier results.json files rather than run by this command, and how they were made."""
    L: list[str] = []
    for record in records:
        one = len(record.seeds) == 1
        L += [
            f"Seed{'' if one else 's'} {', '.join(map(str, record.seeds))} {'was' if one else 'were'} not run by "
            f"this command: {'its' if one else 'their'} values, silhouettes and pre-training diagnostics are read "
            f"from `{record.path.as_posix()}`, which recorded them on {record.date} (device {record.device}) with",
            "",
            f"```\n{record.command}\n```",
            "",
        ]
    if L:
        L += ["with the same budget and downstream data (checked); the other seeds were run by the command above.", ""]
    return L
