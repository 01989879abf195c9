"""The composition root: one process, one Trio loop, one main nursery.

Everything long-lived is started here, in dependency order, and stopped in
reverse: the registry outlives the broker connection manager, which outlives
the supervisor, which outlives the two listeners. A SIGTERM or SIGINT closes
every websocket with 1001, drains within the configured grace time and
returns exit status 0.

Every process is a replica (SPEC section 7): it joins the others through the
broker's control exchange (:mod:`actors.cluster.coordinator`), which costs a
single process one exclusive queue and an alive message every few seconds.
"""

from __future__ import annotations

import gc
import logging
import secrets
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as serve_http
from hypercorn.typing import ASGIFramework

from actors.adapters.rabbitmq import RabbitMQBroker
from actors.adapters.rabbitmq_control import RabbitMQControl
from actors.cluster.coordinator import Coordinator
from actors.ports.broker import BrokerError
from actors.ports.registry import Registry
from actors.supervisor import Supervisor
from web.api import create_app
from web.http_server import hypercorn_config, shield_sends
from web.metrics import ServiceMetrics
from web.websocket import serve_public_websockets

from .config import Config
from .errors import StartupError
from .metrics_bridge import MetricsObserver, report_broker
from .registry_factory import open_registry
from .workers import reuse_port_sockets

log = logging.getLogger(__name__)

SERVICE_NAME = "event-stream-service"


def service_version() -> str:
    try:
        return version(SERVICE_NAME)
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0"


async def serve(config: Config) -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit status."""
    async with (
        trio.open_nursery() as background,
        open_registry(config.database, background) as registry,
    ):
        try:
            return await _serve_with_registry(config, registry)
        finally:
            background.cancel_scope.cancel()


async def _serve_with_registry(config: Config, registry: Registry) -> int:
    broker = RabbitMQBroker(
        config.amqp_urls,
        config.exchange,
        max_age=config.stream_max_age,
        max_length_bytes=config.stream_max_length_bytes,
        pool_size=config.amqp_pool_size,
    )
    metrics = ServiceMetrics()
    report_broker(metrics, broker)
    supervisor = Supervisor(
        broker, registry, config.actor_settings(), observer=MetricsObserver(metrics)
    )
    replica_id = f"{config.replica_name}.{secrets.token_hex(3)}"
    coordinator = Coordinator(
        RabbitMQControl(broker.pool, replica_id), replica_id, config.replica_name
    )
    supervisor.join(coordinator)

    def readiness() -> str | None:
        if not registry.available:
            return "the registry cannot be read or written"
        if not broker.available:
            return "the broker connection is down"
        return None

    app = create_app(
        supervisor,
        ingress_location=config.ingress_location,
        ingress_secure=config.ingress_secure,
        internal_token=config.internal_token,
        readiness=readiness,
        name=SERVICE_NAME,
        version=service_version(),
        metrics=metrics,
        request_timeout=config.request_timeout,
        replica=config.replica_name,
    )

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(broker.run)
            except BrokerError as error:
                raise StartupError(str(error)) from error
            await nursery.start(supervisor.run)
            # The restored stream actors live as long as the process: keep the
            # collector from scanning them again and again (full collections of
            # 50,000 streams pause the loop for ~100 ms).
            gc.freeze()
            await nursery.start(coordinator.run)

            http_stopped = trio.Event()
            http_config = hypercorn_config(
                f"{_bind_host(config.host)}:{config.internal_port}",
                request_timeout=config.request_timeout,
                keepalive_timeout=config.keepalive_timeout,
            )
            with _listening(
                "the internal API", "ESS_INTERNAL_PORT", config.host, config.internal_port
            ):
                await nursery.start(
                    _serve_internal_api, shield_sends(app), http_config, http_stopped, config
                )

            websockets = trio.CancelScope()
            with _listening("websockets", "ESS_PUBLIC_PORT", config.host, config.public_port):
                await nursery.start(_serve_websockets, supervisor, config, metrics, websockets)
            log.info(
                "serving as replica %r: websockets on %s:%d, internal API on %s:%d",
                config.replica_name,
                config.host,
                config.public_port,
                config.host,
                config.internal_port,
            )

            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                break

            with trio.move_on_after(config.shutdown_grace) as grace:
                # Close every websocket with 1001 first (late arrivals get the
                # same), then stop listening: cancelling trio-websocket's
                # handlers first would drop sockets without our close code.
                await supervisor.shutdown()
                await coordinator.leave()
            websockets.cancel()
            if grace.cancelled_caught:
                log.warning("shutdown grace of %.1fs ran out", config.shutdown_grace)
            http_stopped.set()
            nursery.cancel_scope.cancel()
    log.info("stopped")
    return 0


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@contextmanager
def _listening(what: str, variable: str, host: str, port: int) -> Iterator[None]:
    """A port that cannot be bound (in use, not permitted) stops start-up with one line.

    Hypercorn raises the bind's ``OSError`` from inside its nurseries (nested
    exception groups); the command line finds the StartupError in the group.
    """
    try:
        yield
    except* OSError as group:
        error = _first_leaf(group)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise StartupError(
            f"cannot listen for {what} on {host}:{port} ({variable}): {reason}"
        ) from error


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _serve_internal_api(
    app: ASGIFramework,
    http_config: HypercornConfig,
    stopped: trio.Event,
    config: Config,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the internal API until ``stopped``; a worker of several shares the port.

    Hypercorn sets ``SO_REUSEPORT`` only in its own multi-process mode, so
    a worker binds the sockets itself and hands them over as ``fd://`` binds
    (Hypercorn's documented way to serve inherited sockets).
    """
    if config.workers > 1:
        sockets = reuse_port_sockets(config.host, config.internal_port)
        http_config.bind = [f"fd://{sock.detach()}" for sock in sockets]
    await serve_http(app, http_config, shutdown_trigger=stopped.wait, task_status=task_status)


async def _serve_websockets(
    supervisor: Supervisor,
    config: Config,
    metrics: ServiceMetrics,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen for websockets until ``scope`` is cancelled (shutdown stops accepting first).

    A worker of several binds with ``SO_REUSEPORT`` (trio cannot) so that
    the kernel spreads connections over the workers (:mod:`ess.workers`).
    """
    sockets = None
    if config.workers > 1:
        sockets = reuse_port_sockets(config.host, config.public_port)
    with scope:
        await serve_public_websockets(
            supervisor,
            host=config.host,
            port=config.public_port,
            sockets=sockets,
            metrics=metrics,
            handshake_timeout=config.request_timeout,
            close_timeout=config.close_timeout,
            task_status=task_status,
        )
