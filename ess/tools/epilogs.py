"""Examples for the tools' ``--help`` (argparse epilogs, shown verbatim).

Kept apart from the implementations so ``ess.cli`` can show them without
importing the websocket, AMQP and HTTP clients. Use them with
``formatter_class=argparse.RawDescriptionHelpFormatter``.
"""

from __future__ import annotations

__all__ = ["LISTEN_EPILOG", "PUBLISH_EPILOG", "STREAMS_EPILOG"]

LISTEN_EPILOG = """\
output (stdout, one line per event):
  #<ordinal> <time, ISO 8601 UTC> <type> <body>
  where <type> is the part before the first '|' of a '<type>|<protobuf text>'
  event, or the 'type'/'message_type' field of a JSON event (else 'json').
  With --json, each frame as the service sent it (control characters, such
  as line breaks in text events, escaped as \\xNN: one frame per line).

A dropped connection is resumed after the last ordinal printed
(stream_from_ordinal), so nothing is missed or printed twice. A deliberate
close by the service (stream deleted, unknown stream, bad parameter, taken
over by a newer connection) is printed on stderr and ends the command.

examples:
  ess listen ws://localhost:8080/event-stream/2b0c...          # new events only
  ess listen ws://localhost:8080/event-stream/2b0c... --from-ordinal 0   # everything
  ess listen "$LOCATION" --from-datetime 2024-05-01T12:00:00+02:00
  ess listen "$LOCATION" --json | jq .ess_ordinal

exit status: 0 when the service ends the stream (close code 1000) or on
Ctrl-C; 1 if it refuses the connection (e.g. 1002, 4001) or the first
connection fails; 2 for a bad location."""

PUBLISH_EPILOG = """\
MESSAGE may contain {n}, replaced by the event's sequence number (1..N). The
default is a small JSON object: {"message": ..., "n": ..., "count": ..., "time": ...}.
Each event is confirmed by the broker before the next is sent; a summary
line (events, seconds, msg/s) is printed at the end, and a progress bar on
stderr for long runs on a terminal.

examples:
  ess publish demo.events                                  # one generated JSON event
  ess publish demo.events '{"message": "hello {n}"}' --count 10
  ess publish demo.events 'DatasetProcessingStatus|status: "DONE"'
  ess publish demo.events --count 10000 --rate 500         # paced, no drift
  ess publish demo.events --to-queue                       # straight into the stream queue
  ESS_AMQP_URL=amqp://user:pw@rabbit:5672/vh ESS_EXCHANGE=ex ess publish demo.events

exit status: 0 when every event was confirmed; 1 if the broker cannot be
reached or refuses a publish; 130 if interrupted (the summary still says how
many were published)."""

STREAMS_EPILOG = """\
examples:
  ess streams create demo.events            # {"id": 1, "location": "ws://..."}
  LOCATION=$(ess streams create demo.events | jq -r .location)
  ess streams list                          # ID  ROUTING KEY  LOCATION
  ess streams delete 1                      # closes its websockets, then returns
  ess streams list --api http://ess-internal:8081
  ESS_INTERNAL_TOKEN=... ess streams list   # when the API requires a token

exit status: 0 on success; 1 if the API cannot be reached or answers with an
error (its 'detail' is printed on stderr)."""
