//! Test clusters with TLS: a private CA (the `openssl` CLI, which CI installs), a server
//! certificate for the names asked, a client certificate for `postgres`, and pg_hba variants
//! (TLS optional, TLS only, TLS with client certificates).
//!
//! ```no_run
//! use pgbackman_testkit::tls::{Hba, TlsCluster};
//! let pg = TlsCluster::start(&["127.0.0.2"], &["127.0.0.2", "localhost"], Hba::SslOnly);
//! let conninfo = format!(
//!     "{} sslmode=verify-full sslrootcert={}",
//!     pg.tcp_conninfo("127.0.0.2", "postgres"),
//!     pg.files.ca.display()
//! );
//! ```

use std::fs;
use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pgbackman_pgctl::{chown_tree, server_user};

use crate::TestCluster;

/// Which TCP connections the server's pg_hba.conf accepts (the unix socket always trusts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hba {
    /// `host` lines: plain or TLS.
    Any,
    /// `hostssl` lines only: plain connections are refused.
    SslOnly,
    /// `hostssl ... cert`: TLS with a client certificate whose CN is the user name.
    ClientCert,
}

/// The certificate files of a TLS test cluster (PEM; keys unencrypted, mode 0600).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The directory holding the files below.
    pub dir: PathBuf,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here (for "not signed by" tests).
    pub other_ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A [`TestCluster`] with `ssl = on`. Derefs to the cluster; files removed with it.
pub struct TlsCluster {
    pub cluster: TestCluster,
    pub files: TlsFiles,
}

impl Deref for TlsCluster {
    type Target = TestCluster;
    fn deref(&self) -> &TestCluster {
        &self.cluster
    }
}

impl TlsCluster {
    /// Starts a cluster on `addrs` whose certificate names `names` (IP addresses or DNS names),
    /// with the pg_hba variant `hba`. Panics with the reason.
    pub fn start(addrs: &[&str], names: &[&str], hba: Hba) -> TlsCluster {
        let tc = TestCluster::start_on(addrs);
        tc.stop();
        let files = make_files(&tc.dir().join("tls"), names)
            .unwrap_or_else(|e| panic!("testkit: cannot make the TLS files: {e}"));
        // The server's copies live in its data directory, owned by the server user.
        let data = tc.data_dir();
        for (from, to) in [
            (files.dir.join("server.crt"), "server.crt"),
            (files.dir.join("server.key"), "server.key"),
            (files.ca.clone(), "root.crt"),
        ] {
            fs::copy(&from, data.join(to))
                .unwrap_or_else(|e| panic!("testkit: copying {}: {e}", from.display()));
            chmod(&data.join(to), 0o600);
        }
        let hba_text = match hba {
            Hba::Any => "host all all 127.0.0.0/8 trust\nhost all all ::1/128 trust\n",
            Hba::SslOnly => "hostssl all all 127.0.0.0/8 trust\nhostssl all all ::1/128 trust\n",
            Hba::ClientCert => "hostssl all all 127.0.0.0/8 cert\nhostssl all all ::1/128 cert\n",
        };
        fs::write(
            data.join("pg_hba.conf"),
            format!("# written by pgbackman-testkit (TLS)\nlocal all all trust\n{hba_text}"),
        )
        .unwrap_or_else(|e| panic!("testkit: writing pg_hba.conf: {e}"));
        if let Ok(Some(u)) = server_user("TLS files") {
            for f in ["server.crt", "server.key", "root.crt", "pg_hba.conf"] {
                chown_tree(&data.join(f), u.uid.as_raw(), u.gid.as_raw())
                    .unwrap_or_else(|e| panic!("testkit: chown {f}: {e}"));
            }
        }
        let mut tc = tc;
        tc.cluster = tc
            .cluster
            .clone()
            .with_setting("ssl", "on")
            .with_setting("ssl_cert_file", "server.crt")
            .with_setting("ssl_key_file", "server.key")
            .with_setting("ssl_ca_file", "root.crt");
        tc.cluster
            .write_config()
            .unwrap_or_else(|e| panic!("testkit: {e}"));
        tc.start_again();
        TlsCluster { cluster: tc, files }
    }
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("testkit: chmod {}: {e}", p.display()));
}

/// CA, other CA, server certificate for `names`, client certificate for `postgres`, in `dir`.
pub fn make_files(dir: &Path, names: &[&str]) -> Result<TlsFiles, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let openssl = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("openssl: {e} (install the openssl package)"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "pgbackman test CA"), ("other-ca", "some other CA")] {
        let subj = format!("/CN={cn}");
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        a.extend([
            "-days",
            "2",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &key,
            "-out",
            &crt,
        ]);
        openssl(&a)?;
    }
    let sans: Vec<String> = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(_) => format!("IP:{n}"),
            Err(_) => format!("DNS:{n}"),
        })
        .collect();
    let leaf = |name: &str, cn: &str, ext: &str| -> Result<(), String> {
        let ext_file = format!("{name}.ext");
        fs::write(dir.join(&ext_file), ext).map_err(|e| e.to_string())?;
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subj = format!("/CN={cn}");
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend(["-subj", &subj, "-keyout", &key, "-out", &csr]);
        openssl(&a)?;
        openssl(&[
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
            &ext_file,
            "-out",
            &crt,
        ])
    };
    leaf(
        "server",
        names.first().copied().unwrap_or("localhost"),
        &format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            sans.join(",")
        ),
    )?;
    leaf(
        "client",
        "postgres",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )?;
    for key in ["ca.key", "other-ca.key", "server.key", "client.key"] {
        chmod(&dir.join(key), 0o600);
    }
    Ok(TlsFiles {
        dir: dir.to_path_buf(),
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_cluster_speaks_tls_and_hostssl_refuses_plain() {
        let pg = TlsCluster::start(&["127.0.0.2"], &["127.0.0.2"], Hba::SslOnly);
        let tcp = pg.tcp_conninfo("127.0.0.2", "postgres");
        let ca = pg.files.ca.display().to_string();
        let q = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
        assert_eq!(
            pg.psql_conninfo(&format!("{tcp} sslmode=verify-full sslrootcert={ca}"), q),
            "t"
        );
        let plain = pg
            .cluster()
            .psql_conninfo(&format!("{tcp} sslmode=disable"), q);
        assert!(
            plain.is_err_and(|e| e.to_string().contains("no encryption")),
            "plain connection accepted"
        );
        // The unix socket still trusts, for fixtures.
        assert_eq!(pg.psql("postgres", "select 1"), "1");
    }
}
