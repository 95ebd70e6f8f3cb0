"""The data the pipeline trains on and scores: an ordinary Python asset next to the YAML.

The pipeline names it in ``training.deps``, so it runs first and is part of the retraining
job. It writes under ``$TRAINRESULTS_STORAGE/dg/data`` (default ``~/.trainresults-demo``),
where ``classifier/defs.yaml`` reads.
"""

import os
from typing import Any

import dagster as dg

import trainresults_dagster as trd
import trainresults_dagster.storage as storage
from trainresults_dagster.examples.model import make_dataset


def data_root() -> str:
    root = os.environ.get("TRAINRESULTS_STORAGE") or os.path.expanduser("~/.trainresults-demo")
    return f"{root.rstrip('/')}/dg/data"


# The JSON IO manager is the pipeline's (its resource key is shared across the project).
@dg.asset(group_name="classifier", kinds={"parquet"}, io_manager_key=trd.JSON_IO_MANAGER_KEY)
def classifier_data(context: dg.AssetExecutionContext) -> dict[str, Any]:
    """A labelled dataset to train on and an unlabelled one to score (seed: TRAINRESULTS_SEED)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    seed = int(os.environ.get("TRAINRESULTS_SEED") or 7)
    frames = {
        "training": make_dataset(4000, seed=seed),
        "scoring": make_dataset(20000, seed=seed + 1).drop(columns=["label"]),
    }
    out: dict[str, Any] = {"seed": seed}
    for name, frame in frames.items():
        uri = f"{data_root()}/{name}/part-0.parquet"
        fs, path = storage.filesystem_for(uri)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, filesystem=fs)
        out[f"{name}_uri"] = uri
        context.add_output_metadata({f"{name}_rows": len(frame)})
    return out
