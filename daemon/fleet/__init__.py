"""Fleet: many gateways, one PostgreSQL store (``infusiond fleet collect``).

README for developers
=====================

Modules
-------
- ``records``: MQTT message -> frozen record (``EventRecord``, ``CommandResultRecord``,
  ``PumpStateRecord``, ``BridgeInfoRecord``, ``BridgeStateRecord``, ``EventsResponse``);
  ``parse_message(topic, payload)`` raises ``BadMessage`` naming the field.
- ``migrate``: ``await migrate(conn)`` applies ``migrations/NNNN_name.sql`` once each, in one
  transaction under an advisory lock; versions in ``schema_migrations``.
- ``store``: ``await connect(dsn)`` (``FleetError`` for a bad DSN / unreachable server);
  writing: ``Batch`` + ``await store_batch(conn, batch) -> StoreResult`` (one transaction,
  idempotent); reading: ``list_gateways(conn) -> [GatewaySummary]``,
  ``list_sessions(conn, gateway=None) -> [SessionSummary]``,
  ``list_gaps(conn, gateway=None, status=None) -> [Gap]``,
  ``latest_pump_states(conn, gateway=None) -> [PumpState]``,
  ``iter_events(conn, gateway=None, since=None, until=None, types=None)`` (async iterator of
  ``EventRecord`` ordered by ts), ``iter_command_results(conn, gateway=None, since=None,
  until=None)`` (``CommandResultRecord``), ``held_seq_ranges(conn, gateway, session)``;
  ``store_batch_isolating`` (one refused record does not block its batch);
  ``NOTIFY_CHANNEL`` (``infusiond_fleet``) is notified after every commit.
- ``gaps``: completeness: ``refresh_session`` / ``check_session``, ``claim_due_gaps``,
  ``mark_permanent``, ``record_gap_error``.
- ``seqranges``: pure in-memory set of held seqs as ranges (the collector's fast path).
- ``backfill``: asks gateways for missing events (``bridge/request/events``).
- ``collector``: the MQTT -> PostgreSQL loop (its CLI subcommand is :mod:`daemon.cli.collect_cmd`).
- ``paho_tuning``: what the collector changes in paho-mqtt and aiomqtt internals (inbox, read
  buffer, batched PUBACKs, a TLS alert ending the CONNACK wait), in one place.
- ``collect_settings``: the ``--config`` file of ``fleet collect`` (``[broker]`` is the daemon's
  ``BrokerConfig`` plus ``password_file``) and ``tls_context(broker)`` for ``mqtts://``.

Tables (``migrations/0001_initial.sql``)
----------------------------------------
- ``events``: every ``pump.event``; PRIMARY KEY ``(gateway, session, seq)``; columns ts,
  pump_id, type, data (jsonb: the envelope's data), received_at. Indexes on ts,
  (gateway, pump_id, ts), (type, ts).
- ``command_results``: every ``pump.command.result``; PRIMARY KEY ``(gateway, digest)`` where
  digest = SHA-256 of the published bytes (re-delivery stored once; a command id has several
  phases); columns session, seq, ts, pump_id, command_id (null for bad_json), phase, data.
- ``pump_states``: every distinct ``pump.state`` (PRIMARY KEY (gateway, pump_id, digest));
  ``pump_states_latest``: the newest per (gateway, pump_id).
- ``gateways``: per gateway: session and info (data of the latest ``bridge/info``), info_seq,
  info_ts, bridge_state ('online'/'offline'), state_at, last_seen.
- ``sessions``: per (gateway, session): high_water (highest seq known to exist),
  contiguous_upto (1..contiguous_upto held or permanently missing), first_seen, updated_at.
- ``gaps``: missing ranges (gateway, session, from_seq, to_seq inclusive), status 'open'
  (being backfilled: attempts, next_attempt_at, last_error) or 'permanent' (the gateway no
  longer has them; last_error says why). Filled gaps are deleted.

All times are timestamptz (UTC in, UTC out). The schema only grows: later migrations add
tables/columns, never rename.
"""
