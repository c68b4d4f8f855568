//! Throwaway PostgreSQL servers for the TLS tests: a certificate from a
//! throwaway CA ([`crate::ca`]) and a `pg_hba.conf` that accepts plain
//! and TLS connections, TLS only (`hostssl`), or TLS with a client
//! certificate (`cert`); and the CLI run against them.

use crate::ca::{Ca, Issued};
use crate::servers::{daemon_binary, Postgres};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What `pg_hba.conf` asks of TCP connections from 127.0.0.1 (the Unix
/// socket, which the harness uses, is always trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hba {
    /// Plain or TLS, no password (`host … trust`).
    Any,
    /// TLS only (`hostssl … trust`): plain connections are refused.
    TlsOnly,
    /// TLS only, and the client's certificate is its login: its common
    /// name must be the role (`hostssl … cert`).
    ClientCert,
    /// TLS only, with a password (`hostssl … scram-sha-256`).
    TlsPassword,
}

impl Hba {
    fn file(self) -> String {
        let tcp = match self {
            Self::Any => "host all all 127.0.0.1/32 trust",
            Self::TlsOnly => "hostssl all all 127.0.0.1/32 trust",
            Self::ClientCert => "hostssl all all 127.0.0.1/32 cert",
            Self::TlsPassword => "hostssl all all 127.0.0.1/32 scram-sha-256",
        };
        format!("local all all trust\nlocal replication all trust\n{tcp}\n")
    }
}

/// A PostgreSQL with `ssl = on`, its certificate issued by [`TlsPostgres::ca`].
pub struct TlsPostgres {
    /// The server.
    pub pg: Postgres,
    /// The CA that issued the server's certificate (and client ones).
    pub ca: Ca,
}

impl TlsPostgres {
    /// A server whose certificate is valid for `names` (e.g.
    /// `["localhost", "127.0.0.1"]`), with `hba` for TCP connections.
    pub async fn start(hba: Hba, names: &[&str]) -> Self {
        let ca = Ca::new("smartcache test PostgreSQL CA");
        let server = ca.issue("pg-server", "localhost", names);
        let (root, cert) = (ca.cert().to_owned(), server.clone());
        let pg = Postgres::start_configured(move |data| {
            Postgres::install_private(data, &cert.cert, "server.crt");
            Postgres::install_private(data, &cert.key, "server.key");
            Postgres::install_private(data, &root, "root.crt");
            Postgres::configure(
                data,
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 ssl_ca_file = 'root.crt'\npassword_encryption = 'scram-sha-256'",
                Some(&hba.file()),
            );
        })
        .await;
        Self { pg, ca }
    }

    /// A client certificate for role `role` (its common name).
    pub fn client_cert(&self, role: &str) -> Issued {
        self.ca.issue(&format!("client-{role}"), role, &[])
    }

    /// URL of database `db` as `user` with `params` (`sslmode=…&…`).
    pub fn url(&self, user: &str, db: &str, params: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{db}?{params}",
            self.pg.port()
        )
    }
}

/// A PostgreSQL with `ssl = off` (the initdb default).
pub async fn plain_postgres() -> Postgres {
    Postgres::start_configured(|data| {
        Postgres::configure(
            data,
            "ssl = off",
            Some("local all all trust\nhost all all 127.0.0.1/32 trust\n"),
        )
    })
    .await
}

/// `key=value&…` with the paths of `issued` as `sslcert`/`sslkey`.
pub fn client_params(issued: &Issued) -> String {
    format!(
        "sslcert={}&sslkey={}",
        issued.cert.display(),
        issued.key.display()
    )
}

/// A config file in `dir` for `database_url` with `rest` appended, the
/// shared Redis and namespace `ns`.
pub fn write_config(dir: &Path, database_url: &str, ns: &str, rest: &str) -> PathBuf {
    let path = dir.join("smartcache.toml");
    std::fs::write(
        &path,
        format!(
            "database_url = {database_url:?}\nredis_url = {:?}\nnamespace = {ns:?}\npoll_interval_ms = 100\n{rest}",
            crate::redis_url()
        ),
    )
    .expect("write the config");
    path
}

/// `smartcache-invalidator --config CONFIG ARGS…` with the environment's
/// URLs removed, so only the config (and `args`) speak.
pub fn cli(config: &Path, args: &[&str]) -> Output {
    cli_with_env(config, args, &[])
}

/// Like [`cli`], with `env` set.
pub fn cli_with_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(daemon_binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_URL_FILE")
        .env_remove("REDIS_URL")
        .env_remove("SMARTCACHE_NAMESPACE")
        .envs(env.iter().copied())
        .output()
        .expect("run smartcache-invalidator")
}

/// Exit status, stdout and stderr, for assertions.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
