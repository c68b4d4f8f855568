//! A throwaway certificate authority for the TLS tests, made with the
//! `openssl` command line in a temporary directory.
//!
//! Every file is readable by any user (the keys too), so a server started
//! as the `postgres` user can read them; the directory goes with the
//! [`Ca`]. Nothing here is fit for anything but a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

/// A certificate and its private key, both PEM files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed root that issues server and client certificates.
pub struct Ca {
    dir: TempDir,
    root: Issued,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn readable_by_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

fn readable_by_all_dir(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

impl Ca {
    /// A new root named `name` (its subject's common name).
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sc-ca-")
            .tempdir()
            .expect("temp dir");
        readable_by_all_dir(dir.path());
        let subject = format!("/CN={name}");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &subject,
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        let root = Issued {
            cert: dir.path().join("ca.crt"),
            key: dir.path().join("ca.key"),
        };
        readable_by_all(&root.cert);
        readable_by_all(&root.key);
        Self { dir, root }
    }

    /// The root certificate, to trust (`sslrootcert`, `redis_ca_file`).
    pub fn cert(&self) -> &Path {
        &self.root.cert
    }

    /// A certificate for `common_name`, valid for each of `names` (DNS
    /// names, or IP addresses such as `127.0.0.1`) and usable by a server
    /// and by a client. `file` names the files: `{file}.crt`, `{file}.key`.
    pub fn issue(&self, file: &str, common_name: &str, names: &[&str]) -> Issued {
        let dir = self.dir.path();
        let (crt, key, csr) = (
            format!("{file}.crt"),
            format!("{file}.key"),
            format!("{file}.csr"),
        );
        let subject = format!("/CN={common_name}");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &subject,
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        let san: Vec<String> = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{n}"),
                Err(_) => format!("DNS:{n}"),
            })
            .collect();
        let ext = format!("{file}.ext");
        let mut extensions = String::from(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        );
        if !san.is_empty() {
            extensions.push_str(&format!("subjectAltName={}\n", san.join(",")));
        }
        std::fs::write(dir.join(&ext), extensions).expect("write extensions");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
        let issued = Issued {
            cert: dir.join(crt),
            key: dir.join(key),
        };
        readable_by_all(&issued.cert);
        readable_by_all(&issued.key);
        issued
    }

    /// The directory holding every file, for a server's `--dir`-style
    /// settings.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_verifies_against_its_root_and_not_against_another() {
        let ca = Ca::new("smartcache test root");
        let other = Ca::new("another root");
        let leaf = ca.issue("server", "localhost", &["localhost", "127.0.0.1"]);
        let verify = |root: &Path| {
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(root)
                .arg(&leaf.cert)
                .output()
                .expect("openssl")
                .status
                .success()
        };
        assert!(verify(ca.cert()));
        assert!(!verify(other.cert()));
    }
}
