"""A trial's per-example evidence on disk: the records of its evaluations as one Parquet file
(`examples.parquet`: one row per evaluated example, keyed by its index in the split) and each
other per-example table (minimum-norm radii, certificate checks) as a CSV file beside it."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from trainables.core.evaluation import EXAMPLES, FINAL_EXAMPLES, EvalConfig
from trainables.trial import RECORDS_FILE

KEYS = ["index", "label"]


def table_frame(columns: dict[str, torch.Tensor]) -> pd.DataFrame:
    frame = pd.DataFrame({name: values.numpy() for name, values in columns.items()})
    return frame.astype({name: "boolean" for name in frame.columns if frame[name].dtype == bool})


def records_frame(tables: dict[str, dict[str, torch.Tensor]]) -> pd.DataFrame | None:
    """The records of an evaluated epoch and of the final evaluation joined on the example (a
    column is empty, <NA>, where its evaluation did not take the example); None without records."""
    frames = []
    for name, prefix in ((EXAMPLES, ""), (FINAL_EXAMPLES, "final_")):
        if name in tables:
            frame = table_frame(tables[name])
            frames.append(frame.rename(columns={c: prefix + c for c in frame.columns if c not in KEYS}))
    if not frames:
        return None
    return merge_records(frames[0], frames[1]) if len(frames) == 2 else frames[0]


def merge_records(kept: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """`kept` records with `new` ones joined in: where both hold a value of the same column for
    the same example the new evaluation's counts; examples or columns only one of them holds
    keep their values (a later evaluation on more examples extends the set, it never drops what
    was recorded)."""
    merged = kept.merge(new, on=KEYS, how="outer", sort=False, suffixes=("", "__new"))
    for column in new.columns:
        if column not in KEYS and f"{column}__new" in merged:
            merged[column] = merged.pop(f"{column}__new").combine_first(merged[column])
    return merged.sort_values("index", kind="stable", key=lambda index: index.map(order_of(kept, new)))


def order_of(kept: pd.DataFrame, new: pd.DataFrame) -> dict[int, int]:
    """Rows in the order evaluated: the kept examples first, then those only the new evaluation took."""
    order = list(dict.fromkeys([*kept["index"].tolist(), *new["index"].tolist()]))
    return {index: position for position, index in enumerate(order)}


def write_tables(tables: dict[str, dict[str, torch.Tensor]], folder: Path,
                 kept: pd.DataFrame | None = None) -> None:
    """The records as `folder/examples.parquet` (joined into `kept`, records already logged,
    where given), each other table as `folder/NAME.csv` (a header row, then one row per example,
    `example` its index in the split)."""
    records = records_frame(tables)
    if records is not None and kept is not None:
        records = merge_records(kept, records)
    if records is not None:
        folder.mkdir(exist_ok=True)
        records.to_parquet(folder / RECORDS_FILE, index=False)
    index = tables.get(FINAL_EXAMPLES, tables.get(EXAMPLES, {})).get("index")
    for name, columns in tables.items():
        if name in (EXAMPLES, FINAL_EXAMPLES):
            continue
        folder.mkdir(exist_ok=True)
        frame = pd.DataFrame({column: values.numpy() for column, values in columns.items()})
        in_split = index is not None and len(index) == len(frame)
        frame.insert(0, "example", index.numpy() if in_split else range(len(frame)))
        frame.to_csv(folder / f"{name}.csv", index=False)


def known_radii(records: pd.DataFrame, judged: EvalConfig, split_size: int) -> dict[str, torch.Tensor]:
    """Per norm, per example of the split, the smallest eps within which the evaluation `judged`
    (its records' unprefixed columns) verified an adversarial example: an example correct clean
    but not robust at a norm-ball metric was broken there (inf where none was found)."""
    radii: dict[str, torch.Tensor] = {}
    clean = records["clean_acc"].fillna(False).astype(bool)
    for item in judged.items:
        for metric, (norm, eps) in item.balls().items():
            if metric not in records:
                continue
            broken = clean & ~records[metric].fillna(True).astype(bool)
            radius = radii.setdefault(norm, torch.full((split_size,), math.inf, dtype=torch.float64))
            where = torch.tensor(records.loc[broken, "index"].to_numpy(), dtype=torch.long)
            radius[where] = radius[where].clamp(max=eps)
    return radii
