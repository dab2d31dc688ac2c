//! Facts about this host, read from files (no DNS, no libc calls: unsafe is forbidden).

use std::path::PathBuf;

/// This host's FQDN, best effort: it is only a default (`[shell] backup_server` overrides it).
/// The kernel host name if it already has a dot; else the first dotted alias of that name in
/// /etc/hosts (what `hostname -f` usually finds); else host name + kernel domain name (ignoring
/// "(none)"); else the bare host name; else "localhost".
pub fn host_fqdn() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let Some(host) = read("/proc/sys/kernel/hostname").or_else(|| read("/etc/hostname")) else {
        return "localhost".into();
    };
    if host.contains('.') {
        return host;
    }
    if let Some(fqdn) = read("/etc/hosts").and_then(|h| fqdn_from_hosts(&h, &host)) {
        return fqdn;
    }
    match read("/proc/sys/kernel/domainname").filter(|d| d != "(none)") {
        Some(domain) => format!("{host}.{domain}"),
        None => host,
    }
}

fn fqdn_from_hosts(hosts: &str, short: &str) -> Option<String> {
    let prefix = format!("{short}.");
    hosts.lines().find_map(|line| {
        let mut names = line.split('#').next()?.split_whitespace().skip(1);
        names.find(|n| n.starts_with(&prefix)).map(str::to_string)
    })
}

/// (user name, home directory) of the effective uid, from /proc/self/status and /etc/passwd.
pub(crate) fn passwd_entry() -> Option<(String, PathBuf)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2] == euid).then(|| (f[0].to_string(), PathBuf::from(f[5])))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqdn_is_never_empty() {
        let f = host_fqdn();
        assert!(
            !f.is_empty() && !f.contains(char::is_whitespace) && !f.contains("(none)"),
            "{f:?}"
        );
    }

    #[test]
    fn hosts_file_aliases() {
        let hosts = "127.0.0.1 localhost\n# 127.0.1.1 bs1.wrong.org bs1\n127.0.1.1 bs1.example.org bs1 # me\n";
        assert_eq!(
            fqdn_from_hosts(hosts, "bs1").as_deref(),
            Some("bs1.example.org")
        );
        assert_eq!(fqdn_from_hosts(hosts, "bs2"), None);
        assert_eq!(
            fqdn_from_hosts("10.0.0.1 bs10.example.org bs10\n", "bs1"),
            None
        );
    }

    #[test]
    fn passwd_entry_finds_the_current_user() {
        // Containers may lack an entry; when present it must have a name and an absolute home.
        if let Some((name, home)) = passwd_entry() {
            assert!(!name.is_empty() && home.is_absolute());
        }
    }
}
