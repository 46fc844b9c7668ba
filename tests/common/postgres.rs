//! A throw-away PostgreSQL server from Debian's packages on a free
//! 127.0.0.1 port, run as the `postgres` user when the tests run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running PostgreSQL; stopped on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    data: PathBuf,
    as_postgres: bool,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// `postgres://portcullis@127.0.0.1:PORT/postgres` (trust auth).
    pub url: String,
}

fn command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

impl Postgres {
    /// Starts a server; panics with the reason when it cannot (the test
    /// setup installs PostgreSQL, so a missing server is a failure).
    pub fn start() -> Postgres {
        Self::start_on(super::headscale::free_port())
    }

    /// Starts a server on a given 127.0.0.1 port.
    pub fn start_on(port: u16) -> Postgres {
        let bin = Path::new(PG_BIN);
        assert!(
            bin.join("initdb").exists(),
            "PostgreSQL 15 not installed at {PG_BIN} (run scripts/setup)"
        );
        let as_postgres = id(&["-u"]) == Some(0);
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pg-")
            .tempdir()
            .expect("tempdir");
        if as_postgres {
            let uid = id(&["-u", "postgres"]).expect("postgres uid");
            let gid = id(&["-g", "postgres"]).expect("postgres gid");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        let status = command(as_postgres, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "portcullis", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        let options = format!("-p {port} -h 127.0.0.1 -k {}", dir.path().display());
        let status = command(as_postgres, &bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-w", "-o", &options, "start"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(status.success(), "pg_ctl start failed");
        Postgres {
            url: format!("postgres://portcullis@127.0.0.1:{port}/postgres"),
            dir,
            data,
            as_postgres,
            port,
        }
    }

    /// Connections the server has seen, from its log (log_connections is on).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = command(self.as_postgres, &Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}
