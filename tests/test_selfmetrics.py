"""The operator's /metrics: what a scrape shows after attempts, outcomes and template lookups."""


import requests
from prometheus_client.parser import text_string_to_metric_families

from lemzha_operator import selfmetrics
from offline.bench.standins.prometheus_server import free_port


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = requests.get(url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class FakeEmbedder:
    hits, misses = 0, 0


def test_a_scrape_shows_outcomes_stages_errors_and_the_template_cache():
    port = free_port()
    selfmetrics.serve(port)
    url = f"http://127.0.0.1:{port}/metrics"
    embedder = FakeEmbedder()
    selfmetrics.watch_templates(lambda: embedder)
    before = scrape(url)

    selfmetrics.record_attempt({"metrics": 0.2, "rank": 0.01}, [("prometheus", "timeout")])
    selfmetrics.record_attempt({"metrics": 0.3}, [("prometheus", "timeout"), ("loki", "unreachable")])
    selfmetrics.record_final("Completed", "model (metrics only)")
    embedder.hits, embedder.misses = 40, 2
    after = scrape(url)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("lemzha_analysis_stage_seconds_count", stage="metrics") == 2
    assert abs(delta("lemzha_analysis_stage_seconds_sum", stage="metrics") - 0.5) < 1e-9
    assert delta("lemzha_analysis_stage_seconds_bucket", stage="metrics", le="0.25") == 1
    assert delta("lemzha_source_errors_total", source="prometheus", reason="timeout") == 2
    assert delta("lemzha_source_errors_total", source="loki", reason="unreachable") == 1
    assert delta("lemzha_incidents_total", outcome="Completed", method="model (metrics only)") == 1
    assert after[("lemzha_template_cache_total", (("result", "hit"),))] == 40
    assert after[("lemzha_template_cache_total", (("result", "miss"),))] == 2
    assert after[("process_resident_memory_bytes", ())] > 0


def test_the_embedder_counts_hits_and_misses(tmp_path):
    import numpy as np

    from lemzha.text import DIM, TextEmbedder

    class Encoder:
        def encode(self, texts):
            return np.ones((len(texts), DIM), np.float32)

    embedder = TextEmbedder(tmp_path, encoder=Encoder(), sha="0" * 64)
    embedder.embed(["a", "b", "a"])
    assert (embedder.hits, embedder.misses) == (0, 2)
    embedder.embed(["a", "c"])
    assert (embedder.hits, embedder.misses) == (1, 3)
