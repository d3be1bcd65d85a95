-- infusiond fleet store, version 1: every event, command result and state of every gateway.
-- Applied by daemon/fleet/migrate.py in one transaction under an advisory lock.

-- One row per gateway: its current journal session, its bridge/info and bridge/state.
CREATE TABLE gateways (
    gateway      text PRIMARY KEY,
    session      text,                      -- session of the latest bridge/info seen
    info         jsonb,                     -- data of the latest bridge/info envelope
    info_seq     bigint,                    -- seq carried by that bridge/info
    info_ts      timestamptz,
    bridge_state text,                      -- 'online' | 'offline' (bridge/state, last will)
    state_at     timestamptz,               -- when the collector received bridge/state
    last_seen    timestamptz NOT NULL DEFAULT now()
);

-- Every pump.event, stored once: (gateway, session, seq) is the event's identity.
CREATE TABLE events (
    gateway     text        NOT NULL,
    session     text        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq >= 1),
    ts          timestamptz NOT NULL,
    pump_id     text        NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL,       -- the envelope's data object, as published
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, session, seq)
);
CREATE INDEX events_ts_idx ON events (ts);
CREATE INDEX events_gateway_pump_ts_idx ON events (gateway, pump_id, ts);
CREATE INDEX events_type_ts_idx ON events (type, ts);

-- Every pump.command.result. A result has no seq of its own (it carries the latest event's),
-- and one command id has several phases (accepted, applied; duplicate may repeat), so the
-- identity is the SHA-256 of the published bytes: envelopes are deterministic JSON, so a
-- re-delivery is the same bytes and is stored once.
CREATE TABLE command_results (
    gateway     text        NOT NULL,
    digest      bytea       NOT NULL,
    session     text        NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,
    pump_id     text        NOT NULL,
    command_id  text,                       -- null for bad_json / too_large answers
    phase       text        NOT NULL,
    data        jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, digest)
);
CREATE INDEX command_results_command_idx ON command_results (gateway, command_id);
CREATE INDEX command_results_ts_idx ON command_results (ts);

-- The latest pump.state per pump (newest by (seq, ts) within a session; a new session wins).
CREATE TABLE pump_states_latest (
    gateway     text        NOT NULL,
    pump_id     text        NOT NULL,
    session     text        NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,
    data        jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, pump_id)
);

-- Every distinct pump.state published (retained republishes are the same bytes: stored once).
CREATE TABLE pump_states (
    gateway     text        NOT NULL,
    pump_id     text        NOT NULL,
    digest      bytea       NOT NULL,
    session     text        NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,
    data        jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, pump_id, digest)
);
CREATE INDEX pump_states_ts_idx ON pump_states (gateway, pump_id, ts);

-- Completeness per gateway session. high_water: the highest seq known to exist (from events,
-- states, command results and bridge/info). contiguous_upto: every seq in 1..contiguous_upto
-- is held in events or recorded as a permanent gap.
CREATE TABLE sessions (
    gateway         text        NOT NULL,
    session         text        NOT NULL,
    high_water      bigint      NOT NULL DEFAULT 0,
    contiguous_upto bigint      NOT NULL DEFAULT 0,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, session)
);

-- Missing seq ranges. 'open': being backfilled (attempts, next_attempt_at: capped backoff);
-- 'permanent': the gateway no longer has them (journal recreated or retention exceeded);
-- last_error says why. Filled gaps are deleted.
CREATE TABLE gaps (
    gateway         text        NOT NULL,
    session         text        NOT NULL,
    from_seq        bigint      NOT NULL CHECK (from_seq >= 1),
    to_seq          bigint      NOT NULL,
    status          text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'permanent')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, session, from_seq),
    CHECK (to_seq >= from_seq)
);
CREATE INDEX gaps_due_idx ON gaps (next_attempt_at) WHERE status = 'open';
