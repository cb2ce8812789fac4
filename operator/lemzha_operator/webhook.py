"""The Alertmanager webhook receiver's HTTP side: `POST /alerts` on its own port (LEMZHA_ALERTS_PORT), in kopf's
event loop. The decisions are `alerts.Receiver`'s; here only the token, the body cap and the status codes.

| status | when |
|---|---|
| 200 | the post was used: `{"opened": [...], "alreadyOpen": [...], "skipped": {reason: count}}` |
| 400 | malformed JSON, another payload version, a bad field, a label value that is not a namespace or label value |
| 401 | a token is configured and the post does not carry it |
| 413 | the body is over LEMZHA_ALERTS_MAX_BODY_BYTES |
| 503 | the Kubernetes API failed, the token file is unreadable, or the operator is still starting: Alertmanager
        retries, and the retry opens nothing twice |

Registered by the last lines of `handlers.py`; its startup handler runs after the main one.
"""

from __future__ import annotations

import asyncio
import logging
import os

import kopf
from aiohttp import web

from lemzha_operator import selfmetrics
from lemzha_operator.alerts import AlertSettings, Receiver
from lemzha_operator.settings import watched_namespaces

PATH = "/alerts"
log = logging.getLogger("lemzha.webhook")


def _reply(status: int, body: dict) -> web.Response:
    selfmetrics.ALERT_POSTS.labels(str(status)).inc()
    response = web.json_response(body, status=status)
    if status == 413:
        response.force_close()  # the unread rest of the body must not be read as the next request
    return response


def application(receiver: Receiver) -> web.Application:
    limit = receiver.settings.max_body_bytes

    async def receive(request: web.Request) -> web.Response:
        try:
            if not receiver.authorized(request.headers.get("Authorization")):
                return _reply(401, {"error": "missing or wrong bearer token"})
        except OSError as err:
            log.warning("alert token file unreadable: %s", err)
            return _reply(503, {"error": "the receiver's token file is unreadable"})
        too_large = {"error": f"body over the receiver's cap of {limit} bytes (LEMZHA_ALERTS_MAX_BODY_BYTES)"}
        if request.content_length is not None and request.content_length > limit:
            return _reply(413, too_large)
        try:
            body = await request.read()  # the app's client_max_size stops a body without Content-Length too
        except web.HTTPRequestEntityTooLarge:
            return _reply(413, too_large)
        try:
            reply = await asyncio.to_thread(receiver.handle, body)
        except Exception as err:  # the API refused or failed: Alertmanager retries on 5xx
            log.warning("alert post not completed, Alertmanager will retry: %s", err)
            return _reply(503, {"error": f"incidents could not be created: {str(err)[:512]}"})
        if reply.status != 200:
            log.warning("alert post refused (%d): %s", reply.status, reply.body.get("error"))
        return _reply(reply.status, reply.body)

    app = web.Application(client_max_size=limit)
    app.router.add_post(PATH, receive)
    return app


async def serve(receiver: Receiver) -> web.AppRunner:
    """Start listening on the receiver's host and port; stop with `await runner.cleanup()`."""
    # lingering: the unread rest of a refused body is drained for at most 2 s, then the connection closes
    runner = web.AppRunner(application(receiver), access_log=None, shutdown_timeout=5.0, lingering_time=2.0)
    await runner.setup()
    await web.TCPSite(runner, receiver.settings.host, receiver.settings.port).start()
    return runner


@kopf.on.startup()
async def start_alert_receiver(memo: kopf.Memo, logger, **_) -> None:
    settings = AlertSettings.from_env(os.environ)  # a bad value stops startup, named
    if not settings.port:
        return
    from lemzha_operator.watches import create_incident

    def create(body: dict) -> bool:
        if getattr(memo, "objects", None) is None:
            raise RuntimeError("the operator is still starting")
        return create_incident(memo, body)

    memo.alert_receiver = await serve(Receiver(settings, watched_namespaces(), create))
    logger.info("Alertmanager webhook listening on %s:%d%s", settings.host, settings.port, PATH)


@kopf.on.cleanup()
async def stop_alert_receiver(memo: kopf.Memo, **_) -> None:
    runner = getattr(memo, "alert_receiver", None)
    if runner is not None:
        await runner.cleanup()
