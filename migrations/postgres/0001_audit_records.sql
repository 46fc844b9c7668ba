-- One hash chain per connector; several connectors may share the table.
-- See src/audit/chain.rs for the row format. `time` stays TEXT (fixed-width
-- UTC) so that both backends compare and return it identically.
CREATE TABLE audit_records (
    connector TEXT NOT NULL,
    seq BIGINT NOT NULL,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    caller TEXT,
    endpoint TEXT,
    decision TEXT,
    reason TEXT,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (connector, seq)
);

CREATE INDEX audit_records_time ON audit_records (time);
CREATE INDEX audit_records_caller ON audit_records (caller, time);
CREATE INDEX audit_records_endpoint ON audit_records (endpoint, time);
