-- Alerting state (lib/jobpipe/alerting.py, alert_delivery.py). Every instance of every daemon reads
-- and writes these rows under row locks, so a condition is announced once however many processes
-- see it, and a restart finds the state where it was left.

-- One row per (daemon, condition). `firing` and the message waiting for delivery live together so
-- that one transaction decides "this starts now" and "this message goes out".
ALTER TABLE alerts
    ADD COLUMN severity      text NOT NULL DEFAULT 'fail',  -- fail or warn (jobpipe health colours)
    ADD COLUMN summary       text,                          -- one line: what crossed which threshold
    ADD COLUMN detail        text,                          -- further lines (last error, instances)
    ADD COLUMN hint          text,                          -- what to run
    ADD COLUMN host          text,                          -- host of the instance that saw it start
    ADD COLUMN active_since  timestamptz,                   -- condition true since (before it fires)
    ADD COLUMN clear_since   timestamptz,                   -- condition false since (while firing)
    ADD COLUMN msg_kind      text,                          -- start, reminder, resolved, unit_failed
    ADD COLUMN msg_seq       integer NOT NULL DEFAULT 0,    -- bumped per queued message
    ADD COLUMN delivery_error text;                         -- last delivery problem, explained
-- delivery: NULL (nothing to send), pending, sending (claimed; next_delivery_at = claim expiry),
-- sent, ambiguous (may have gone out: never resent), disabled (alerts.channel = none).
CREATE INDEX alerts_delivery_due ON alerts (next_delivery_at) WHERE delivery IN ('pending', 'sending');

ALTER TABLE alert_log ADD COLUMN detail text;                -- the gateway's answer, explained
CREATE INDEX alert_log_at ON alert_log (at);

-- The Signal channel as a whole: a rate limit or captcha holds back every daemon's messages.
CREATE TABLE alert_channel (
    channel         text PRIMARY KEY,                       -- 'signal'
    degraded_until  timestamptz,
    reason          text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Pending counts per stage over time, sampled by the evaluators: "backlog growing for N minutes"
-- is a statement about history that no single process keeps.
CREATE TABLE alert_samples (
    stage    text NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    daemon   text NOT NULL,
    pending  bigint NOT NULL,
    PRIMARY KEY (stage, at)
);
