-- One hash chain per connector; see src/audit/chain.rs for the row format.
-- WITHOUT ROWID clusters rows by (connector, seq), the order every chain
-- walk (verify, tail, export) reads them in.
CREATE TABLE audit_records (
    connector TEXT NOT NULL,
    seq INTEGER NOT NULL,
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
) WITHOUT ROWID;

CREATE INDEX audit_records_time ON audit_records (time);
CREATE INDEX audit_records_caller ON audit_records (caller, time);
CREATE INDEX audit_records_endpoint ON audit_records (endpoint, time);
