"""Prepared.ids_of: data set and application membership come from the index fields, not from id prefixes."""

from __future__ import annotations

from pathlib import Path

from offline.data.dataset import Prepared


def entry(scenario_id: str, dataset: str, day: str) -> dict:
    return {"id": scenario_id, "dataset": dataset, "day": day}


def test_ids_of_reads_the_dataset_field_and_the_day_s_application():
    prepared = Prepared(Path("unused"), {"scenarios": [
        entry("a", "nezha", "2023-01-29"),
        entry("b", "lemma", "2023-01-29"),  # a LEMMA incident on a TrainTicket day is still not TrainTicket
        entry("c", "nezha", "2022-08-22"),
        entry("nezha/x", "lemma", "2024-02-15"),  # the id's prefix says nothing
        entry("d", "nezha", "2023-01-30"),
    ]})
    assert prepared.ids_of("nezha") == ["a", "c", "d"]
    assert prepared.ids_of("lemma") == ["b", "nezha/x"]
    assert prepared.ids_of("nezha", app="trainticket") == ["a", "d"]
    assert prepared.ids_of("nezha", app="onlineboutique") == ["c"]
    assert prepared.ids_of("lemma", app="trainticket") == []
