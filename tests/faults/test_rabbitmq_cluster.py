"""A RabbitMQ node lost in a 3-node cluster while clients receive a steady publish.

SPEC section 7: "A broker node that goes away: the service reconnects (...
to the next of several comma-separated URLs in ``ESS_AMQP_URL``), and
connections resume from their cursors on the stream's replicas: no gap, no
duplicate." Issue 11.4: a consumer the broker cancels because the stream's
leader moved is resubscribed, not closed.

The cluster is the test's own (:mod:`tests.support.rabbitmq_cluster`: three
nodes on free ports, never the shared broker). ``ess serve`` gets the three
URLs, one data connection (``ESS_AMQP_POOL_SIZE=1``: slot 0 on node 1) and
the control's own connection (node 2). Stream queues get RabbitMQ's default
for a 3-node cluster: a member on every node (checked). Two cases:

- **the node the service is connected to** is killed (``kill -9``, a lost
  host). The stream was declared by the service, so its leader was that
  node too (``client-local``): the data connection goes, the service
  reconnects to the next URL, and every consumer resumes from its cursor on
  another replica while the stream elects a new leader;
- **the node that leads the stream** is stopped while the service's
  connections are elsewhere (the stream was declared by another client on
  node 3, as the Account Server may): no connection of the service is lost,
  the leader moves, and whatever the broker does to the consumers reading
  the replicas (RabbitMQ 3.10 cancels them) they are resubscribed.

In both, one client alone on a stream (its own consumer) and two sharing
another (the live-tail hub) must receive every event the stream holds,
exactly once, in order, with consecutive ordinals, and no websocket closes.

Observed on RabbitMQ 3.10.8: neither case makes the broker cancel a
consumer (``basic.cancel``): a consumer reads its node's member, which
follows the new leader. What 3.10 does instead, for a stream with no member
on the connection's node, is refuse the consumer (406 "does not have a
replica on the local node"); the third case, **no-local-replica**, checks
the websockets stay open through that (the adapter maps it to
``BrokerUnavailable``, retried) and receive everything once a member is
added there: a live client refused from the start still gets every event
published since it connected (its hub, or its own consumer, resumes by time
from its first attempt).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import amqp
from tests.e2e.service import ServiceProcess
from tests.support.rabbitmq_cluster import Node, RabbitMQCluster, installed

from .conftest import api_client, create_stream, poll_until, wait_status
from .test_reconnect_without_loss import (
    RetryingPublisher,
    SteadyPublishing,
    check_all,
    end_with_sentinels,
    stored_in_full,
    streams_of_three_clients,
    three_clients,
)

#: The cluster boots within the first test: well above the default 120 s per test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

#: Events every client must have received before the node goes, and after it went.
BEFORE, AFTER = 20, 50
#: Bound on the service (or the stream) recovering from the lost node.
RECOVERY_TIMEOUT = 90.0
#: Bound on one publisher confirm before publishing again.
CONFIRM_BOUND = 5.0
CASES = ["connected-node-killed", "leader-node-stopped", "no-local-replica"]


@pytest.fixture(scope="module")
def rabbitmq_cluster() -> Iterator[RabbitMQCluster]:
    if not installed():
        pytest.fail("Debian's rabbitmq-server is not installed (/usr/lib/rabbitmq/bin)")
    cluster = RabbitMQCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def cluster(rabbitmq_cluster: RabbitMQCluster) -> RabbitMQCluster:
    """The module's cluster with every node running (a previous test lost one)."""
    for node in rabbitmq_cluster.nodes:
        if not node.running:
            await trio.to_thread.run_sync(rabbitmq_cluster.restart_node, node)
    return rabbitmq_cluster


def _connections(cluster: RabbitMQCluster, name: str) -> dict[str, tuple[int, str]]:
    """``{connection name: (server port, pid)}`` of the connections named ``name#*``/``.*``."""
    via = next(node for node in cluster.nodes if node.running)
    out = cluster.ctl(via, "list_connections", "port", "pid", "client_properties", "-q")
    found: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        port, pid, properties = line.split("\t", 2)
        for prefix in (f'"{name}#', f'"{name}.'):
            start = properties.find(prefix)
            if start >= 0:
                found[properties[start + 1 : properties.index('"', start + 1)]] = (int(port), pid)
    return found


def _members(cluster: RabbitMQCluster, queue: str) -> tuple[str, list[str]] | None:
    """(leader, members) of the stream queue ``queue``; None while its leader is down.

    (``list_queues`` leaves out a queue whose leader's node is down.)
    """
    via = next(node for node in cluster.nodes if node.running)
    out = cluster.ctl(via, "list_queues", "name", "leader", "members", "--formatter", "json")
    for row in json.loads(out):
        if row["name"] == queue:
            return str(row["leader"]), sorted(row["members"])
    return None


def _node_on_port(cluster: RabbitMQCluster, port: int) -> Node:
    return next(node for node in cluster.nodes if node.amqp_port == port)


async def _declare_stream(node: Node, queue: str) -> None:
    """Declare a stream queue as another client would, through ``node`` (so it leads it)."""
    async with amqp.connect(node.amqp_url) as connection, connection.channel() as channel:
        await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})


class BoundedPublisher(RetryingPublisher):
    """Publishes until confirmed, giving a confirm up after :data:`CONFIRM_BOUND`.

    A publish in flight to a stream leader that dies may never be confirmed
    (the raw publisher would wait 30 s): publish it again on a new
    connection. The stream may then hold it twice; the clients must too.
    """

    async def publish(self, queue: str, body: bytes) -> None:
        while True:
            with trio.move_on_after(CONFIRM_BOUND):
                await super().publish(queue, body)
                return
            self.retries += 1
            await self.aclose()


async def _streams_ctl(cluster: RabbitMQCluster, via: Node, *args: str) -> None:
    await trio.to_thread.run_sync(
        lambda: cluster.ctl(via, *args, tool="rabbitmq-streams"), abandon_on_cancel=True
    )


@pytest.mark.parametrize("lost", CASES)
async def test_clients_lose_nothing_when_a_cluster_node_goes(
    cluster: RabbitMQCluster, tmp_path: Path, lost: str
) -> None:
    """Every client gets every stored event once, in order; no websocket closes."""
    name = f"ess-cluster-{secrets.token_hex(4)}"
    keys = [f"ess.cluster.{lost}.{n}.{secrets.token_hex(4)}" for n in ("alone", "shared")]
    node1, node2, node3 = cluster.nodes
    if lost != "connected-node-killed":
        for key in keys:
            await _declare_stream(node3, key)
    victim = {"connected-node-killed": node1, "leader-node-stopped": node3}.get(lost)
    service = ServiceProcess(
        workdir=tmp_path / "ess",
        amqp_url=",".join(f"{url}?name={name}" for url in cluster.urls),
        extra_env={"ESS_AMQP_POOL_SIZE": "1", "ESS_MAX_CONNECTIONS_PER_STREAM": "0"},
    )
    try:
        # A cluster that has just booted on a busy machine may take a while to
        # serve the control connection's declares: ready is bounded, not raced.
        await trio.to_thread.run_sync(service.start, RECOVERY_TIMEOUT)
        async with api_client(service) as api:
            streams = [await create_stream(api, key) for key in keys]
            before = await trio.to_thread.run_sync(_connections, cluster, name)
            data_port, data_pid = before[f"{name}#0"]
            assert data_port == node1.amqp_port, before
            assert before[f"{name}.control"][0] == node2.amqp_port, before
            for key in keys:  # replicated on every node; led where it was declared
                described = await trio.to_thread.run_sync(_members, cluster, key)
                assert described is not None, f"no queue {key!r}"
                leader, members = described
                assert members == sorted(node.name for node in cluster.nodes), members
                assert leader == (node1 if lost == "connected-node-killed" else node3).name
                if lost == "no-local-replica":
                    await _streams_ctl(cluster, node3, "delete_replica", key, node1.name)
            async with three_clients(streams[0]["location"], streams[1]["location"]) as (
                collectors,
                readers,
            ):
                publisher = BoundedPublisher(node2.amqp_url)
                for key in keys:
                    await publisher.publish(key, b'{"seq": 0}')
                if lost != "no-local-replica":  # every client is attached and receiving
                    with trio.fail_after(30):
                        for collector in collectors:
                            await collector.got_first.wait()
                publishing = SteadyPublishing(publisher, keys, published=1)

                async def received_at_least(count: int) -> bool:
                    return all(len(c.events) >= count for c in collectors)

                async def refused() -> bool:
                    return service.log().count("replica on the local node") >= 2

                async def recovered() -> bool:
                    for key in keys:
                        described = await trio.to_thread.run_sync(_members, cluster, key)
                        if described is None or (
                            victim is not None and described[0] == victim.name
                        ):
                            return False  # (a queue whose leader is down is not listed)
                        if node1.name not in described[1] and lost == "no-local-replica":
                            return False
                    now = await trio.to_thread.run_sync(_connections, cluster, name)
                    return f"{name}#0" in now

                async with trio.open_nursery() as window:
                    window.start_soon(publishing.run)
                    if lost == "no-local-replica":
                        # Every consumer refused (the alone one, the hub's): still open.
                        await poll_until(refused, 30, "the consumers refused by the broker")
                        assert [c.events for c in collectors] == [[], [], []]
                    else:
                        await poll_until(lambda: received_at_least(BEFORE), 30, "events before")
                    lost_at = trio.current_time()
                    if lost == "connected-node-killed":
                        await trio.to_thread.run_sync(cluster.kill_node, node1)
                    elif lost == "leader-node-stopped":
                        await trio.to_thread.run_sync(cluster.stop_node, node3)
                    else:  # the member comes (back) on the service's node
                        for key in keys:
                            await _streams_ctl(cluster, node3, "add_replica", key, node1.name)
                    await poll_until(recovered, RECOVERY_TIMEOUT, "a new leader, connected", 0.5)
                    await wait_status(api, "/health/ready", 200, timeout=RECOVERY_TIMEOUT)
                    target = publishing.published + AFTER
                    await poll_until(
                        lambda: received_at_least(target), RECOVERY_TIMEOUT, f"{target} events"
                    )
                    recovered_in = trio.current_time() - lost_at
                    publishing.stop.set()
                await end_with_sentinels(publisher, keys, collectors, readers)
            after = await trio.to_thread.run_sync(_connections, cluster, name)
    except BaseException:
        print(f"--- ess serve's log:\n{service.log()}")  # shown with the failure
        raise
    finally:
        await trio.to_thread.run_sync(service.stop)
    log = service.log()
    published = publishing.published
    stored = await stored_in_full(node2.amqp_url, keys, published)
    print(
        f"[{lost}] {published} events per stream, recovered in {recovered_in:.1f}s "
        f"(publisher retries {publisher.retries}); broker cancels "
        f"{log.count('the broker cancelled the consumer')}, refusals "
        f"{log.count('replica on the local node')}; received "
        + ", ".join(f"{c.name}: {len(c.events)}" for c in collectors)
    )
    check_all(collectors, streams_of_three_clients(stored, *keys), f"[{lost}]")
    new_port, new_pid = after[f"{name}#0"]
    if lost == "connected-node-killed":  # reconnected to another URL
        assert new_port != node1.amqp_port, after
    else:  # the connection stayed while the stream's leader or members moved
        assert (new_port, new_pid) == (data_port, data_pid), (before, after)
