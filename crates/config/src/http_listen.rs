//! `[agent] http_listen`: `/healthz` and `/metrics` carry no authentication and no TLS, so they
//! belong on loopback. Another address is accepted, with a warning (log and `--check`).

use std::net::{IpAddr, SocketAddr};

/// Why `addr` exposes `/healthz` and `/metrics` beyond this host; None for loopback (or "").
pub fn http_listen_exposure(addr: &str) -> Option<String> {
    let addr = addr.trim();
    if addr.is_empty() {
        return None;
    }
    let ip = match addr.parse::<SocketAddr>() {
        Ok(a) => Some(a.ip()),
        Err(_) => addr
            .rsplit_once(':')
            .and_then(|(h, _)| h.trim_matches(['[', ']']).parse::<IpAddr>().ok()),
    };
    let why = match ip {
        Some(ip) if ip.is_loopback() => return None,
        Some(ip) if ip.is_unspecified() => "every interface of this host".to_string(),
        Some(ip) => format!("{ip}, not a loopback address"),
        None => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            if host.eq_ignore_ascii_case("localhost") {
                return None;
            }
            format!("host name {host}, which may not be a loopback address")
        }
    };
    Some(format!(
        "[agent] http_listen = \"{addr}\" serves /healthz and /metrics, without authentication or TLS, on {why}: \
         anyone who reaches it reads this agent's state; keep 127.0.0.1:9187 and scrape through an SSH tunnel \
         or a reverse proxy with TLS and authentication"
    ))
}

#[cfg(test)]
mod tests {
    use super::http_listen_exposure as x;

    #[test]
    fn loopback_is_quiet_everything_else_warns() {
        for quiet in [
            "",
            "127.0.0.1:9187",
            "127.0.0.2:1",
            "[::1]:9187",
            "localhost:9187",
        ] {
            assert_eq!(x(quiet), None, "{quiet}");
        }
        assert!(x("0.0.0.0:9187").unwrap().contains("every interface"));
        assert!(x("[::]:9187").unwrap().contains("every interface"));
        assert!(
            x("10.1.2.3:9187")
                .unwrap()
                .contains("10.1.2.3, not a loopback address")
        );
        assert!(
            x("backup1.example.org:9187")
                .unwrap()
                .contains("host name backup1.example.org")
        );
        assert!(x("10.1.2.3:9187").unwrap().contains("127.0.0.1:9187"));
    }
}
