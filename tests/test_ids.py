from __future__ import annotations

from modelplex.ids import new_id


def test_ids_are_unique_and_sorted_in_creation_order() -> None:
    ids = [new_id("job") for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("job_") and len(i) == 30 for i in ids)
