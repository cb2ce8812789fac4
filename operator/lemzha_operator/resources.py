"""The custom resources' API coordinates, defined once for the whole operator."""

GROUP, VERSION = "lemzha.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
INCIDENT_KIND, INCIDENT_PLURAL = "RCAIncident", "rcaincidents"
WATCH_KIND, WATCH_PLURAL = "RCAWatch", "rcawatches"
