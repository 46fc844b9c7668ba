//! Where rows live: SQLite (embedded default) or PostgreSQL (several
//! connectors sharing one database, one chain per connector).
//!
//! Both backends use the same table and the same SQL text (`$N`
//! placeholders work in both), so a backend is one arm of [`Store`], and
//! [`on_pool!`] writes each operation once for both arms.
//!
//! # SQLite durability
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: a commit is safe
//! against the process crashing, but the last commits before an operating
//! system crash or power loss can be rolled back (the file itself never
//! corrupts). That trade keeps an fsync off every batch. The final batch of
//! an orderly shutdown is written with `synchronous=FULL` and followed by a
//! checkpoint, so an orderly stop is fully durable. The writer uses a single
//! connection, so the pragma applies to the connection that writes.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Acquire;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::AuditError;
use super::chain::{ChainHead, Row};
use super::query::Filter;
use super::time_fmt;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Column list of every SELECT, in [`Row`] field order (decoded by index).
const COLUMNS: &str =
    "connector, seq, time, kind, caller, endpoint, decision, reason, body, prev_hash, hash";

const INSERT: &str = "INSERT INTO audit_records \
    (connector, seq, time, kind, caller, endpoint, decision, reason, body, prev_hash, hash) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// Runs `$body` with `$pool` bound to whichever pool `$store` holds; the
/// body is type-checked once per backend.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

/// Inserts `$rows` in one transaction on the connection `$conn`.
macro_rules! insert_rows {
    ($conn:expr, $rows:expr) => {{
        let mut tx = $conn.begin().await?;
        for row in $rows {
            sqlx::query(INSERT)
                .bind(&row.connector)
                .bind(seq_to_db(row.seq, &row.connector)?)
                .bind(&row.time)
                .bind(&row.kind)
                .bind(&row.caller)
                .bind(&row.endpoint)
                .bind(&row.decision)
                .bind(&row.reason)
                .bind(&row.body)
                .bind(&row.prev_hash)
                .bind(&row.hash)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }};
}

/// Whether a store may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The writer: creates the database if needed and migrates the schema.
    ReadWrite,
    /// Readers (verify, query, tail, export): never create or change
    /// anything.
    ReadOnly,
}

/// An open audit database.
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite file.
    Sqlite(SqlitePool),
    /// PostgreSQL server.
    Postgres(PgPool),
}

/// A value bound to a dynamically built query.
enum Bind {
    Text(String),
}

impl Store {
    /// Opens the store at `url`: `postgres://...` / `postgresql://...`,
    /// `sqlite://PATH` (so `sqlite:///abs/path.db`), `sqlite:PATH`, or a
    /// plain file path.
    pub async fn open(url: &str, access: Access) -> Result<Store, AuditError> {
        let write = access == Access::ReadWrite;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(if write { 2 } else { 4 })
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            if write {
                POSTGRES_MIGRATIONS.run(&pool).await?;
            }
            return Ok(Store::Postgres(pool));
        }
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url)?
        } else if url.contains("://") || url.is_empty() {
            return Err(AuditError::BadUrl {
                url: url.to_owned(),
            });
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let options = options.busy_timeout(Duration::from_secs(5));
        let (options, max) = if write {
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
            // One connection: the writer is the only user, and the
            // shutdown pragma must reach the connection that writes.
            (options, 1)
        } else {
            (options.read_only(true).create_if_missing(false), 4)
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .idle_timeout(None)
            .connect_with(options)
            .await?;
        if write {
            SQLITE_MIGRATIONS.run(&pool).await?;
        }
        Ok(Store::Sqlite(pool))
    }

    /// The last row of `connector`'s chain, or genesis if it has none.
    pub async fn head(&self, connector: &str) -> Result<ChainHead, AuditError> {
        let sql = "SELECT seq, hash FROM audit_records WHERE connector = $1 \
                   ORDER BY seq DESC LIMIT 1";
        let found: Option<(i64, String)> = on_pool!(self, pool => {
            sqlx::query_as(sql).bind(connector).fetch_optional(pool).await?
        });
        match found {
            Some((seq, hash)) => Ok(ChainHead {
                seq: seq_from_db(seq, connector)?,
                hash,
            }),
            None => Ok(ChainHead::genesis()),
        }
    }

    /// Appends `rows` in one transaction. With `durable`, SQLite syncs the
    /// commit fully and checkpoints the WAL (used for the last batch).
    ///
    /// A connection whose append failed is closed, never reused: after a
    /// failed statement or commit (a full disk, an I/O error) SQLite may
    /// already have rolled the transaction back while the driver still
    /// believes it open, and the next use of that connection would run
    /// inside a transaction that is not there (for the shutdown's
    /// `PRAGMA synchronous`, "Safety level may not be changed inside a
    /// transaction"). A fresh connection starts from a clean state.
    pub async fn append(&self, rows: &[Row], durable: bool) -> Result<(), AuditError> {
        match self {
            Store::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                let written = async {
                    if durable {
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    insert_rows!(conn, rows);
                    Ok::<(), AuditError>(())
                }
                .await;
                if let Err(e) = written {
                    // The close error adds nothing to the append error.
                    let _ = conn.close().await;
                    return Err(e);
                }
                if durable {
                    // Best effort: a busy reader only delays the checkpoint
                    // to the next open; the commit above is already durable.
                    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                        .execute(&mut *conn)
                        .await;
                }
            }
            Store::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                let written = async {
                    insert_rows!(conn, rows);
                    Ok::<(), AuditError>(())
                }
                .await;
                if let Err(e) = written {
                    let _ = conn.close().await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Up to `limit` rows of `connector` with seq greater than `after`, in
    /// seq order.
    pub async fn rows_after(
        &self,
        connector: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Row>, AuditError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_records WHERE connector = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3"
        );
        let after = seq_to_db(after, connector)?;
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql)
                .bind(connector)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(decode_row).collect()
        })
    }

    /// The names of all connectors with at least one row, sorted.
    pub async fn connectors(&self) -> Result<Vec<String>, AuditError> {
        let sql = "SELECT DISTINCT connector FROM audit_records ORDER BY connector";
        let names: Vec<(String,)> = on_pool!(self, pool => {
            sqlx::query_as(sql).fetch_all(pool).await?
        });
        Ok(names.into_iter().map(|(name,)| name).collect())
    }

    /// The most recent rows matching `filter` (at most `filter.limit`),
    /// returned oldest first.
    pub async fn query(&self, filter: &Filter) -> Result<Vec<Row>, AuditError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut binds: Vec<Bind> = Vec::new();
        let mut add = |clause: &str, value: String| {
            binds.push(Bind::Text(value));
            clauses.push(clause.replace('?', &format!("${}", binds.len())));
        };
        if let Some(since) = filter.since {
            // Fixed-width UTC text compares in time order.
            add("time >= ?", time_fmt::format(since));
        }
        if let Some(until) = filter.until {
            add("time < ?", time_fmt::format(until));
        }
        if let Some(connector) = &filter.connector {
            add("connector = ?", connector.clone());
        }
        if let Some(caller) = &filter.caller {
            add(
                "lower(caller) LIKE ? ESCAPE '\\'",
                format!("%{}%", escape_like(&caller.to_lowercase())),
            );
        }
        if let Some(endpoint) = &filter.endpoint {
            add("endpoint = ?", endpoint.clone());
        }
        if let Some(decision) = filter.decision {
            add("decision = ?", decision.as_str().to_owned());
        }
        if let Some(kind) = filter.kind {
            add("kind = ?", kind.as_str().to_owned());
        }
        let mut sql = format!("SELECT {COLUMNS} FROM audit_records");
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(" ORDER BY time DESC, connector DESC, seq DESC");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut rows: Vec<Row> = on_pool!(self, pool => {
            let mut query = sqlx::query(&sql);
            for bind in &binds {
                query = match bind {
                    Bind::Text(text) => query.bind(text.as_str()),
                };
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter().map(decode_row).collect::<Result<Vec<Row>, AuditError>>()?
        });
        rows.reverse();
        Ok(rows)
    }

    /// Closes all connections, waiting for them to finish.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn seq_to_db(seq: u64, connector: &str) -> Result<i64, AuditError> {
    i64::try_from(seq).map_err(|_| AuditError::Corrupt {
        connector: connector.to_owned(),
        seq: i64::MAX,
        reason: format!("seq {seq} does not fit the database"),
    })
}

fn seq_from_db(seq: i64, connector: &str) -> Result<u64, AuditError> {
    u64::try_from(seq).map_err(|_| AuditError::Corrupt {
        connector: connector.to_owned(),
        seq,
        reason: "negative seq".to_owned(),
    })
}

/// Decodes a row selected with [`COLUMNS`], for either backend.
fn decode_row<R>(row: &R) -> Result<Row, AuditError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let connector: String = row.try_get(0)?;
    let seq: i64 = row.try_get(1)?;
    Ok(Row {
        seq: seq_from_db(seq, &connector)?,
        time: row.try_get(2)?,
        kind: row.try_get(3)?,
        caller: row.try_get(4)?,
        endpoint: row.try_get(5)?,
        decision: row.try_get(6)?,
        reason: row.try_get(7)?,
        body: row.try_get(8)?,
        prev_hash: row.try_get(9)?,
        hash: row.try_get(10)?,
        connector,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escaping() {
        assert_eq!(escape_like("a%b_c\\d"), "a\\%b\\_c\\\\d");
    }

    #[tokio::test]
    async fn rejects_unknown_scheme() {
        let err = Store::open("mysql://x/y", Access::ReadWrite)
            .await
            .err()
            .map(|e| e.reason());
        assert_eq!(err, Some("audit_bad_url"));
    }

    #[tokio::test]
    async fn read_only_does_not_create() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.db");
        let url = path.to_string_lossy().into_owned();
        assert!(Store::open(&url, Access::ReadOnly).await.is_err());
        assert!(!path.exists());
    }
}
