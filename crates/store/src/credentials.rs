//! S3 credentials: from a file on the agent's host (named by the catalog) or from the
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`). Never from
//! argv, never written anywhere, never rendered: `Debug` shows the key id's first characters.

use std::fmt;
use std::path::Path;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id: String = self.access_key_id.chars().take(4).collect();
        write!(f, "Credentials({id}…, secret redacted)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("S3 credentials file {path}: {reason}")]
    File { path: String, reason: String },
    #[error(
        "no S3 credentials: the repository names no credentials file and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not both set in the agent's environment (set them in the service's environment file, or update_repository REPO --credentials-file FILE)"
    )]
    Missing,
}

impl Credentials {
    /// Reads `access_key_id=…`, `secret_access_key=…` and optionally `session_token=…` lines
    /// (`#` comments, blank lines and `aws_` prefixes accepted, so an AWS CLI credentials
    /// section's lines work). The file must not be readable by group or others, like pgpass.
    pub fn from_file(path: &Path) -> Result<Credentials, CredentialsError> {
        let err = |reason: String| CredentialsError::File {
            path: path.display().to_string(),
            reason,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(err(format!(
                    "readable by group or others (mode {:o}); chmod 600 it",
                    meta.permissions().mode() & 0o777
                )));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let (mut id, mut secret, mut token) = (None, None, None);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                // Never echo the line: it may be a key.
                return Err(err(format!("line {} is not key=value", n + 1)));
            };
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().to_string();
            match k.strip_prefix("aws_").unwrap_or(&k) {
                "access_key_id" => id = Some(v),
                "secret_access_key" => secret = Some(v),
                "session_token" => token = Some(v),
                _ => return Err(err(format!("line {}: unknown key {k}", n + 1))),
            }
        }
        match (id, secret) {
            (Some(i), Some(s)) if !i.is_empty() && !s.is_empty() => Ok(Credentials {
                access_key_id: i,
                secret_access_key: s,
                session_token: token.filter(|t| !t.is_empty()),
            }),
            _ => Err(err(
                "needs both access_key_id=… and secret_access_key=… lines".into(),
            )),
        }
    }

    /// From the environment; `Missing` unless both keys are set.
    pub fn from_env() -> Result<Credentials, CredentialsError> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(i), Some(s)) => Ok(Credentials {
                access_key_id: i,
                secret_access_key: s,
                session_token: get("AWS_SESSION_TOKEN"),
            }),
            _ => Err(CredentialsError::Missing),
        }
    }

    /// The file when the repository names one, else the environment.
    pub fn resolve(file: Option<&Path>) -> Result<Credentials, CredentialsError> {
        match file {
            Some(p) => Credentials::from_file(p),
            None => Credentials::from_env(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_rules_and_redaction() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s3.keys");
        std::fs::write(
            &p,
            "# lab\n[default]\naws_access_key_id = AKIAEXAMPLE\nsecret_access_key=verysecret\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains("verysecret"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Credentials::from_file(&p).unwrap();
        assert_eq!(c.access_key_id, "AKIAEXAMPLE");
        assert_eq!(c.secret_access_key, "verysecret");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("verysecret") && !shown.contains("AKIAEXAMPLE"),
            "{shown}"
        );
        std::fs::write(&p, "verysecret\n").unwrap();
        let e = Credentials::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains("verysecret"), "{e}");
    }
}
