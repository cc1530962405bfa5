//! The admin socket: a Unix stream socket, one JSON request per line, one JSON response
//! per line.
//!
//! - The socket is created mode 0600 with no window where it is wider: it is bound
//!   inside a fresh private directory (0700), chmod'ed, then renamed into place.
//! - Peers whose uid is neither root nor ours are answered `permission_denied` and
//!   dropped (SO_PEERCRED).
//! - A bad line (not JSON, unknown command, too long) gets an error response and the
//!   connection stays usable. Lines are capped at `MAX_LINE` before being buffered.

use std::future::Future;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn, Instrument};

use super::apply::{apply, Host};
use super::protocol::{
    ErrorCode, EventLine, Query, Request, Response, Stream, COMMANDS, MAX_LINE, STREAMS,
};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin socket {0} is in use by a running server")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
}

pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminSocket {
    /// Binds the socket at `path` (mode 0600). A stale socket file left by a crashed
    /// server is replaced; a live one is an error. Must be called inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<AdminSocket, SocketError> {
        let io = |source| SocketError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
                    Err(_) => std::fs::remove_file(path).map_err(io)?,
                }
            }
            Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&parent)
                .map_err(io)?;
        }
        // A private directory nobody else can enter: the socket is never reachable
        // by anyone else before its mode is 0600.
        let private = parent.join(format!(".twinlun-admin.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(io)?;
        let result = (|| {
            let tmp = private.join("s");
            let std_listener = std::os::unix::net::UnixListener::bind(&tmp)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, path)?;
            std_listener.set_nonblocking(true)?;
            Ok(std_listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        let std_listener = result.map_err(io)?;
        let listener = UnixListener::from_std(std_listener).map_err(io)?;
        Ok(AdminSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` resolves, then removes the socket file.
    pub async fn run<H>(self, host: Arc<H>, shutdown: impl Future<Output = ()>)
    where
        H: Host + Send + Sync + 'static,
    {
        let my_uid = current_uid();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let host = host.clone();
                        let uid = stream.peer_cred().ok().map(|c| c.uid());
                        let span = tracing::info_span!("admin", peer_uid = ?uid);
                        tokio::spawn(serve_connection(host, stream, uid, my_uid).instrument(span));
                    }
                    Err(e) => {
                        warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
            }
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), error = %e, "cannot remove the admin socket");
        }
    }
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

enum Line {
    Text,
    TooLong,
    Eof,
}

/// Reads one line into `buf` (without the newline), never buffering more than `MAX_LINE`
/// bytes: the rest of an over-long line is read and dropped.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if buf.is_empty() {
                Line::Eof
            } else {
                Line::Text
            });
        }
        let (chunk, used, end) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() >= MAX_LINE {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(used);
        if end {
            return Ok(if too_long { Line::TooLong } else { Line::Text });
        }
    }
}

/// Why a request line was not a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub code: ErrorCode,
    pub message: String,
}

impl From<BadLine> for Response {
    fn from(b: BadLine) -> Response {
        Response::Error {
            code: b.code,
            message: b.message,
        }
    }
}

/// Walks a JSON document and fails on an object that names a key twice (serde_json
/// keeps the last one silently: `{"cmd":"status","cmd":"volume_list"}` would run the
/// second).
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
}

/// Turns a request line into a request, or says what is wrong with it: not one JSON
/// object (trailing data included), a key named twice, an unknown command or field.
pub fn parse_request(line: &[u8]) -> Result<Request, BadLine> {
    let bad = |code, message: String| BadLine { code, message };
    serde_json::from_slice::<NoDuplicateKeys>(line)
        .map_err(|e| bad(ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| bad(ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    let Some(cmd) = value.get("cmd") else {
        return Err(bad(
            ErrorCode::BadRequest,
            "expected an object with a \"cmd\" field".into(),
        ));
    };
    let Some(cmd) = cmd.as_str() else {
        return Err(bad(
            ErrorCode::BadRequest,
            "\"cmd\" must be a string".into(),
        ));
    };
    if !COMMANDS.contains(&cmd) {
        return Err(bad(
            ErrorCode::UnknownCommand,
            format!("unknown command '{cmd}' (known: {})", COMMANDS.join(", ")),
        ));
    }
    let cmd = cmd.to_string();
    let req: Request = serde_json::from_value(value.clone())
        .map_err(|e| bad(ErrorCode::BadRequest, format!("{cmd}: {e}")))?;
    // serde's deny_unknown_fields does not reach unit variants of a tagged enum.
    if matches!(
        req,
        Request::Query(
            Query::Status
                | Query::VolumeList
                | Query::GroupList
                | Query::TargetList
                | Query::SessionList
        )
    ) {
        if let Some(extra) = value
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "cmd"))
        {
            return Err(bad(
                ErrorCode::BadRequest,
                format!("{cmd}: unknown field `{extra}`, {cmd} takes no arguments"),
            ));
        }
    }
    Ok(req)
}

/// A streaming request (`STREAMS`), `None` when the line is anything else (a request
/// for `parse_request`, or garbage it will name).
pub fn parse_stream(line: &[u8]) -> Option<Result<Stream, BadLine>> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let cmd = value.get("cmd")?.as_str()?;
    if !STREAMS.contains(&cmd) {
        return None;
    }
    let bad = |message: String| BadLine {
        code: ErrorCode::BadRequest,
        message,
    };
    // A repeated key is refused here too (serde_json would keep the last one).
    if let Err(e) = serde_json::from_slice::<NoDuplicateKeys>(line) {
        return Some(Err(bad(format!("not JSON: {e}"))));
    }
    // Unit variants do not see deny_unknown_fields.
    if let Some(extra) = value
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "cmd"))
    {
        return Some(Err(bad(format!(
            "{cmd}: unknown field `{extra}`, {cmd} takes no arguments"
        ))));
    }
    Some(serde_json::from_value(value.clone()).map_err(|e| bad(format!("{cmd}: {e}"))))
}

/// Serves an `events` stream until the client closes its side, a write fails, or
/// the bus goes away. Anything the client sends meanwhile is read and ignored: the
/// reads are how a closed client is noticed while no event comes.
async fn stream_events<H, R>(host: &H, mut r: R, w: &mut tokio::net::unix::OwnedWriteHalf)
where
    H: Host + ?Sized,
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let Some(mut sub) = host.subscribe_events() else {
        let resp = Response::error(ErrorCode::NotFound, "this server has no event stream");
        let _ = write_response(w, &resp).await;
        return;
    };
    debug!("event stream opened");
    let mut sink = [0u8; 512];
    loop {
        tokio::select! {
            event = sub.next() => {
                let Some(event) = event else { return };
                let mut line = match serde_json::to_vec(&EventLine::new(&event)) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(error = %e, "cannot encode an event");
                        continue;
                    }
                };
                line.push(b'\n');
                if let Err(e) = w.write_all(&line).await {
                    debug!(error = %e, "event stream closed by the reader");
                    return;
                }
            }
            n = r.read(&mut sink) => match n {
                Ok(0) | Err(_) => {
                    debug!("event stream closed by the reader");
                    return;
                }
                Ok(_) => {}
            },
        }
    }
}

async fn serve_connection<H>(host: Arc<H>, stream: UnixStream, uid: Option<u32>, my_uid: u32)
where
    H: Host + Send + Sync + 'static,
{
    let (r, mut w) = stream.into_split();
    if !matches!(uid, Some(u) if u == 0 || u == my_uid) {
        warn!("admin connection refused: peer is neither root nor the server's user");
        let resp = Response::error(
            ErrorCode::PermissionDenied,
            "only root or the server's user may use the admin socket",
        );
        let _ = write_response(&mut w, &resp).await;
        return;
    }
    debug!("admin connection");
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        let resp = match read_line(&mut r, &mut buf).await {
            Err(e) => {
                debug!(error = %e, "admin connection read failed");
                return;
            }
            Ok(Line::Eof) => return,
            Ok(Line::TooLong) => Response::error(
                ErrorCode::TooLong,
                format!("request line longer than {MAX_LINE} bytes"),
            ),
            Ok(Line::Text) if buf.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Line::Text) => match parse_stream(&buf) {
                Some(Ok(Stream::Events)) => {
                    info!("event stream requested");
                    return stream_events(&*host, r, &mut w).await;
                }
                Some(Err(bad)) => bad.into(),
                None => match parse_request(&buf) {
                    Err(bad) => bad.into(),
                    Ok(req) => {
                        let cmd = command_name(&req);
                        let host = host.clone();
                        let change = req.is_change();
                        // apply does blocking file I/O (fsync): keep it off the async workers.
                        // The connection's span goes with the request to its thread.
                        let span = tracing::Span::current();
                        let resp = tokio::task::spawn_blocking(move || {
                            span.in_scope(|| apply(&*host, req))
                        })
                        .await
                        .unwrap_or_else(|e| {
                            Response::error(ErrorCode::Io, format!("internal error: {e}"))
                        });
                        match &resp {
                            Response::Error { code, message } => {
                                info!(cmd, code = ?code, message = %message, "admin request refused")
                            }
                            _ if change => info!(cmd, "admin change applied"),
                            _ => debug!(cmd, "admin query"),
                        }
                        resp
                    }
                },
            },
        };
        if let Err(e) = write_response(&mut w, &resp).await {
            debug!(error = %e, "admin connection write failed");
            return;
        }
    }
}

/// The `cmd` tag of a request, for logs (never its arguments: they may hold secrets).
fn command_name(req: &Request) -> String {
    serde_json::to_value(req)
        .ok()
        .and_then(|v| v.get("cmd").and_then(|c| c.as_str()).map(str::to_string))
        .unwrap_or_default()
}

async fn write_response<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    resp: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_have_codes() {
        let code = |line: &str| match parse_request(line.as_bytes()) {
            Err(BadLine { code, .. }) => code,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(code("{nope"), ErrorCode::BadRequest);
        assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"cmd":7}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"cmd":"frobnicate"}"#), ErrorCode::UnknownCommand);
        assert_eq!(code(r#"{"cmd":"volume_show"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"cmd":"volume_create","name":"x","size":"12Q"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_request(br#"{"cmd":"status"}"#).unwrap(),
            Request::from(Query::Status)
        );
    }

    #[test]
    fn streams_are_told_apart_from_requests_and_take_no_arguments() {
        assert_eq!(
            parse_stream(br#"{"cmd":"events"}"#).unwrap().unwrap(),
            Stream::Events
        );
        // Requests and garbage are left to parse_request.
        assert!(parse_stream(br#"{"cmd":"status"}"#).is_none());
        assert!(parse_stream(b"{nope").is_none());
        let refused = |line: &str| match parse_stream(line.as_bytes()) {
            Some(Err(BadLine { code, message })) => {
                assert_eq!(code, ErrorCode::BadRequest, "{line}");
                message
            }
            other => panic!("{line}: {other:?}"),
        };
        let m = refused(r#"{"cmd":"events","since":3}"#);
        assert!(m.contains("unknown field `since`"), "{m}");
        let m = refused(r#"{"cmd":"events","cmd":"events"}"#);
        assert!(m.contains("duplicate key `cmd`"), "{m}");
    }

    #[test]
    fn duplicate_keys_and_trailing_data_are_refused() {
        let refused = |line: &str| match parse_request(line.as_bytes()) {
            Err(BadLine { code, message }) => {
                assert_eq!(code, ErrorCode::BadRequest, "{line}");
                message
            }
            other => panic!("{line}: {other:?}"),
        };
        let m = refused(r#"{"cmd":"status","cmd":"volume_list"}"#);
        assert!(m.contains("duplicate key `cmd`"), "{m}");
        let m = refused(r#"{"cmd":"volume_create","name":"a","name":"b","size":"1M"}"#);
        assert!(m.contains("duplicate key `name`"), "{m}");
        // Nested objects and arrays are walked too.
        let m = refused(r#"{"cmd":"status","x":[{"k":1,"k":2}]}"#);
        assert!(m.contains("duplicate key `k`"), "{m}");
        let m = refused(r#"{"cmd":"status"} {"cmd":"volume_list"}"#);
        assert!(m.contains("trailing characters"), "{m}");
        refused(r#"{"cmd":"status"}x"#);
        // Whitespace after the object is not data.
        assert_eq!(
            parse_request(b"{\"cmd\":\"status\"}  \r").unwrap(),
            Request::from(Query::Status)
        );
    }

    #[tokio::test]
    async fn long_lines_are_dropped_and_the_stream_goes_on() {
        let mut input = vec![b'x'; MAX_LINE * 2];
        input.extend_from_slice(b"\n{\"cmd\":\"status\"}\n");
        let mut r = BufReader::with_capacity(1024, &input[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut r, &mut buf).await.unwrap(),
            Line::TooLong
        ));
        assert!(buf.len() < MAX_LINE);
        assert!(matches!(
            read_line(&mut r, &mut buf).await.unwrap(),
            Line::Text
        ));
        assert_eq!(buf, br#"{"cmd":"status"}"#);
        assert!(matches!(
            read_line(&mut r, &mut buf).await.unwrap(),
            Line::Eof
        ));
    }

    #[tokio::test]
    async fn socket_is_private_and_stale_sockets_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        {
            let s = AdminSocket::bind(&path).unwrap();
            let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            // A second server on the same socket is refused while the first listens.
            assert!(matches!(
                AdminSocket::bind(&path),
                Err(SocketError::InUse(_))
            ));
        }
        // The first one is gone (its file stays behind): the stale socket is replaced.
        let _s = AdminSocket::bind(&path).unwrap();
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "no private temp dir is left behind");

        // A missing parent folder is created.
        let nested = dir.path().join("run/twinlun/admin.sock");
        let _n = AdminSocket::bind(&nested).unwrap();
        assert!(nested.exists());

        let other = dir.path().join("plain");
        std::fs::write(&other, b"x").unwrap();
        assert!(matches!(
            AdminSocket::bind(&other),
            Err(SocketError::NotASocket(_))
        ));
    }
}
