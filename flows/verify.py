"""Prefect flow `verify-store`: read every shard of the store and check it (storage.verify), as
`mvg store --verify` does; prefect.yaml runs it nightly after the ingest.

A broken shard fails the flow run, so it shows as Failed in the Prefect UI and any automation on
failed runs (a notification) fires; the broken shards are listed in the run's log and in its table
artifact `verify-store`.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from storage.home import chosen_store
from storage.verify import verify_store


class BrokenShards(RuntimeError):
    """The store holds shards that fail their checks; the message lists them."""


@flow(name="verify-store", log_prints=True)
def verify_store_flow(store: str | None = None, datasets: list[str] | None = None) -> dict:
    check = verify_store(chosen_store(store), datasets)
    rows = [{"dataset": s.dataset, "case": s.case, "role": s.role, "problem": problem} for s in check.broken for problem in s.problems]
    create_table_artifact(key="verify-store", table=rows or [{"problem": "none"}], description=check.summary())
    for row in rows:
        print(row["problem"])
    print(check.summary())
    if rows:
        raise BrokenShards(f"{check.summary()}:\n" + "\n".join(row["problem"] for row in rows))
    return {"store": check.root, "shards": len(check.shards), "broken": 0, "unchecksummed": len(check.unchecksummed)}
