"""Skip marks for tests that need an installed binary (CI installs them all)."""

import pytest

from offline.bench.standins.alertmanager_server import ALERTMANAGER
from offline.bench.standins.alertmanager_server import SKIP_REASON as NO_ALERTMANAGER
from offline.bench.standins.prometheus_server import PROMETHEUS, PROMTOOL
from offline.bench.standins.prometheus_server import SKIP_REASON as NO_PROMETHEUS

requires_prometheus = pytest.mark.skipif(not (PROMETHEUS.is_file() and PROMTOOL.is_file()), reason=NO_PROMETHEUS)
requires_alertmanager = pytest.mark.skipif(not ALERTMANAGER.is_file(), reason=NO_ALERTMANAGER)
