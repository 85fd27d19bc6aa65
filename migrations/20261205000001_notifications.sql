-- Each attempt to deliver a run's notification to a [[notify]] target: when, how it ended and
-- why. Never the URL: it is a secret (a Slack webhook URL carries its token).
CREATE TABLE notification_attempts (
    id           INTEGER PRIMARY KEY,
    run_id       INTEGER NOT NULL REFERENCES runs(id),
    target       TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    started_at   TEXT    NOT NULL,
    finished_at  TEXT    NOT NULL,
    -- delivered | rejected | server_error | rate_limited | timeout | transport_error | url_unavailable
    outcome      TEXT    NOT NULL,
    http_status  INTEGER,
    error        TEXT,
    -- 1 on the last attempt of a delivery: delivered, rejected, or given up at the deadline.
    last         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX notification_attempts_run ON notification_attempts (run_id);
