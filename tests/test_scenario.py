from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from lemzha.scenario import Label, Scenario, ScenarioError
from lemzha.scenario_io import load_scenario, save_scenario

START = datetime(2023, 1, 29, 8, 0, 0, tzinfo=UTC)


def make(**overrides) -> Scenario:
    pods = ("a-5dc8d4f9fd-46997", "b-5dc8d4f9fd-llznp", "b-5dc8d4f9fd-zzzzz")
    values = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    values[1, 0, 0] = np.nan
    args = dict(
        id="t/1",
        app="test",
        namespace="ns",
        start=START,
        pods=pods,
        pod_service={pods[0]: "a", pods[1]: "b", pods[2]: "b"},
        metrics=("cpu_millicores", "memory_bytes"),
        values=values,
        logs=pd.DataFrame(
            {"service": ["a", "b"], "bin": [0, 3], "template": ["x <num>", "error y"], "count": [2, 1],
             "level": ["INFO", "ERROR"]}
        ),
        onset=START + timedelta(seconds=65),
        label=Label("b", pods[1:], "cpu_contention", START + timedelta(seconds=65), 2),
    )
    args.update(overrides)
    return Scenario(**args)


def test_valid_scenario_derives_services_mask_and_bins():
    s = make()
    assert s.services == ("a", "b")
    assert s.n_bins == 4
    assert not s.mask[1, 0, 0] and s.mask[0, 0, 0]
    assert list(s.pod_service_index()) == [0, 1, 1]
    assert s.bin_starts[1] == pd.Timestamp("2023-01-29 08:00:30", tz="UTC")
    assert s.onset_bin == 2


def test_without_label_drops_only_the_label():
    s = make()
    bare = s.without_label()
    assert bare.label is None and s.label is not None
    assert bare.onset == s.onset
    np.testing.assert_array_equal(bare.values, s.values)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"values": np.zeros((4, 2, 2), np.float32)}, "shape"),
        ({"pod_service": {"a-5dc8d4f9fd-46997": "a"}}, "without a service"),
        ({"metrics": ("memory_bytes", "cpu_millicores")}, "catalog order"),
        ({"metrics": ("cpu_millicores", "nonsense")}, "not in the catalog"),
        ({"start": START + timedelta(seconds=7)}, "aligned"),
        ({"pods": ()}, "no pods"),
        ({"values": np.zeros((0, 3, 2), np.float32)}, "zero bins"),
        ({"label": Label("zzz", (), None, START, 0)}, "root cause"),
        ({"label": Label("b", (), None, START, 9)}, "fault_bin"),
        ({"logs": pd.DataFrame({"service": ["q"], "bin": [0], "template": ["t"], "count": [1], "level": ["INFO"]})},
         "unknown services"),
        ({"logs": pd.DataFrame({"service": ["a"], "bin": [7], "template": ["t"], "count": [1], "level": ["INFO"]})},
         "log bins"),
        ({"logs": pd.DataFrame({"service": ["a"], "bin": [0], "template": ["t"], "count": [1], "level": ["LOUD"]})},
         "levels"),
    ],
)
def test_constructor_refuses_invalid_data(override, message):
    with pytest.raises(ScenarioError, match=message):
        make(**override)


def test_round_trip_on_disk(tmp_path):
    s = make()
    save_scenario(s, tmp_path / "t1")
    back = load_scenario(tmp_path / "t1")
    np.testing.assert_array_equal(back.values, s.values)
    assert back.pods == s.pods and back.metrics == s.metrics and back.start == s.start
    assert back.label == s.label and back.onset == s.onset
    pd.testing.assert_frame_equal(back.logs, s.logs)
    assert load_scenario(tmp_path / "t1", with_label=False).label is None


def test_save_replaces_whole_and_leaves_no_temp(tmp_path):
    save_scenario(make(), tmp_path / "t1")
    save_scenario(make(label=None), tmp_path / "t1")
    assert not (tmp_path / "t1" / "label.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1"]


def test_load_refuses_unknown_schema(tmp_path):
    save_scenario(make(), tmp_path / "t1")
    meta = (tmp_path / "t1" / "scenario.json")
    meta.write_text(meta.read_text().replace('"schema_version": 1', '"schema_version": 99'))
    with pytest.raises(ScenarioError, match="schema_version"):
        load_scenario(tmp_path / "t1")
    with pytest.raises(ScenarioError, match="not a scenario"):
        load_scenario(tmp_path / "missing")
