"""The module `kopf run -m lemzha_operator.main` loads: it registers every handler.

- `handlers`: RCAIncident analysis, the TTL janitor, health;
- `watches`: RCAWatch evaluation;
- `webhook`: the Alertmanager receiver.
"""

from lemzha_operator import handlers, watches, webhook  # noqa: F401
