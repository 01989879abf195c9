"""A content header with all thirteen basic properties set, for ESS's codec and for pamqp's.

The codec tests publish it with ESS's :class:`amqp.Properties` (pamqp reads it
back) and the frame tests deliver it with pamqp's (ESS's decoder reads it
back): the same values, so both directions cover every field.
"""

from __future__ import annotations

import datetime
from typing import Any

from pamqp import commands

from amqp import Properties

#: Every property, by the name :class:`amqp.Properties` gives it (pamqp says ``message_type``).
EVERY_PROPERTY: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "headers": {"timestamp_in_ms": 1_700_000_000_123, "s": "v", "nested": {"a": [1, "b"]}},
    "delivery_mode": 2,
    "priority": 3,
    "correlation_id": "c",
    "reply_to": "r",
    "expiration": "60000",
    "message_id": "m",
    "timestamp": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    "type": "t",
    "user_id": "guest",
    "app_id": "ess",
}


def ess_properties() -> Properties:
    return Properties(**EVERY_PROPERTY)


def pamqp_properties() -> commands.Basic.Properties:
    fields = dict(EVERY_PROPERTY)
    fields["message_type"] = fields.pop("type")
    return commands.Basic.Properties(**fields)
