//! `fanout healthcheck`: one GET of a running controller's /healthz, for
//! the container health check (the distroless image has no curl). Plain
//! HTTP/1.0 over a std TcpStream: no runtime, no config, no AWS.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why the probe got no status code.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    /// The URL is not of the one form the probe speaks.
    #[error("{url}: only http://HOST:PORT/PATH URLs are supported")]
    Url {
        /// The URL as given.
        url: String,
    },
    /// No connection, or the request or answer failed on the wire.
    #[error("cannot reach {url}: {source}")]
    Connect {
        /// The URL as given.
        url: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The answer did not start with an HTTP status line.
    #[error("{url}: no HTTP status line in the answer")]
    Answer {
        /// The URL as given.
        url: String,
    },
}

/// The HTTP status code `url` answers with, within `timeout`.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, HealthcheckError> {
    let bad = || HealthcheckError::Url {
        url: url.to_string(),
    };
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (host_port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let conn = |source| HealthcheckError::Connect {
        url: url.to_string(),
        source,
    };
    let addr = host_port
        .to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(conn)?;
    s.set_read_timeout(Some(timeout)).map_err(conn)?;
    s.set_write_timeout(Some(timeout)).map_err(conn)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host_port}\r\n\r\n").map_err(conn)?;
    // The status line may arrive in pieces: read until its end, EOF, or
    // more than a status line can be.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 256 {
        let n = s.read(&mut buf).map_err(conn)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HealthcheckError::Answer {
            url: url.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(status: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf);
            // In pieces, as a server may send it.
            for piece in ["HTTP/1.1 ", status, "\r\ncontent-length: 0\r\n\r\n"] {
                let _ = c.write_all(piece.as_bytes());
                let _ = c.flush();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        format!("http://127.0.0.1:{port}/healthz")
    }

    #[test]
    fn reads_the_status_code() {
        assert_eq!(
            probe(&serve_once("200 OK"), Duration::from_secs(2)).unwrap(),
            200
        );
        assert_eq!(
            probe(
                &serve_once("503 Service Unavailable"),
                Duration::from_secs(2)
            )
            .unwrap(),
            503
        );
    }

    #[test]
    fn nothing_listening_is_an_error_that_names_the_url() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/healthz",
            l.local_addr().unwrap().port()
        );
        drop(l);
        let err = probe(&url, Duration::from_secs(1)).unwrap_err().to_string();
        assert!(err.contains(&url), "{err}");
    }

    #[test]
    fn only_http_urls() {
        assert!(matches!(
            probe("https://x/healthz", Duration::from_secs(1)),
            Err(HealthcheckError::Url { .. })
        ));
    }
}
