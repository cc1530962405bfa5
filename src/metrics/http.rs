//! A minimal HTTP/1.1 responder for `GET /metrics`: one request per connection, then
//! close. Prometheus needs nothing more, and a scrape endpoint should not be a web
//! server: requests are bounded in size, time and number at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Longest request head accepted (Prometheus sends a few hundred bytes).
const MAX_REQUEST: usize = 8 * 1024;
/// A client has this long to send its request and this long again to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// Produces the metrics page. Must not wait on I/O: it runs on the runtime.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Answers scrapes on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, render: Render) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                // EMFILE and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(stream, &render).await {
                tracing::debug!(%peer, error = %e, "metrics request not answered");
            }
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Metrics { head_only: bool },
    NotFound,
    Bad,
}

/// Reads the request line of `head` (the bytes up to the blank line).
fn parse(head: &[u8]) -> Ask {
    let Ok(text) = std::str::from_utf8(head) else {
        return Ask::Bad;
    };
    let line = text.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ask::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Ask::Bad;
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => Ask::Metrics { head_only: false },
        ("HEAD", "/metrics") => Ask::Metrics { head_only: true },
        _ => Ask::NotFound,
    }
}

async fn answer(mut stream: TcpStream, render: &Render) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut got = 0;
    let head_end = tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            if let Some(end) = find_blank_line(&buf[..got]) {
                return Ok::<_, std::io::Error>(Some(end));
            }
            if got == buf.len() {
                return Ok(None);
            }
            let n = stream.read(&mut buf[got..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (status, body, content_type, head_only) = match head_end.map(|end| parse(&buf[..end])) {
        None => (
            "431 Request Header Fields Too Large",
            "request too large\n".to_string(),
            "text/plain",
            false,
        ),
        Some(Ask::Bad) => (
            "400 Bad Request",
            "bad request\n".to_string(),
            "text/plain",
            false,
        ),
        Some(Ask::NotFound) => (
            "404 Not Found",
            "not found: the metrics are at GET /metrics\n".to_string(),
            "text/plain",
            false,
        ),
        Some(Ask::Metrics { head_only }) => {
            ("200 OK", render(), super::text::CONTENT_TYPE, head_only)
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(head.as_bytes()).await?;
        if !head_only {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

fn find_blank_line(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_or_head_of_metrics_is_served() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Ask::Metrics { head_only: false }
        );
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.0"),
            Ask::Metrics { head_only: false }
        );
        assert_eq!(
            parse(b"HEAD /metrics HTTP/1.1"),
            Ask::Metrics { head_only: true }
        );
        assert_eq!(parse(b"GET / HTTP/1.1"), Ask::NotFound);
        assert_eq!(parse(b"POST /metrics HTTP/1.1"), Ask::NotFound);
        assert_eq!(parse(b"GET /metrics"), Ask::Bad);
        assert_eq!(parse(b"GET /metrics SPDY/3"), Ask::Bad);
        assert_eq!(parse(b"\xff\xfe"), Ask::Bad);
    }
}
