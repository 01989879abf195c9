#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest).
# Starts a locally installed one, or installs Debian's rabbitmq-server when
# it is absent and we are root. Exits non-zero with one clear line otherwise.
set -euo pipefail
# shellcheck source=scripts/debian-install.sh
. "$(dirname "$0")/debian-install.sh"

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

wait_ready() {
    for _ in $(seq 1 90); do
        if port_open && rabbitmqctl -q status >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    return 1
}

if port_open; then
    exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    debian_install ensure-rabbitmq rabbitmq-server rabbitmq-server
fi

echo "ensure-rabbitmq: starting rabbitmq-server" >&2
rabbitmq-server -detached || true
if ! wait_ready; then
    echo "ensure-rabbitmq: RabbitMQ did not come up on 127.0.0.1:5672 within 90 s" >&2
    exit 1
fi
# The stream plugin is not needed: stream queues are served over AMQP 0-9-1.
