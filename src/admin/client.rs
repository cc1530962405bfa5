//! The client side of the admin socket, used by `twinlun ctl`: blocking, one request
//! and one response per call.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Request, Response};

/// Why `ctl` could not talk to a server. The connect failures are told apart because
/// each has its own remedy: "no server" is the wrong answer for a typo in the path or
/// a missing permission.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no admin socket at {path} (is `twinlun serve` running with this data dir? --socket, TWINLUN_SOCKET or --config name another)")]
    Missing { path: PathBuf },
    #[error("{path} is a directory, not the admin socket (the socket is DATA_DIR/admin.sock)")]
    IsDirectory { path: PathBuf },
    #[error("{path} is not a socket")]
    NotASocket { path: PathBuf },
    #[error("permission denied on the admin socket {path} (it is mode 0600: run ctl as the server's user or as root)")]
    PermissionDenied {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no server listens on {path} (a server that stopped without removing it?)")]
    Refused { path: PathBuf },
    #[error("cannot connect to the admin socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin socket i/o")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection without answering")]
    Closed,
    #[error("the server sent a response this client does not understand")]
    BadResponse(#[source] serde_json::Error),
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| connect_error(path, e))?;
        // A change fsyncs a few files; anything slower than this is a hung server.
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request; returns the raw response line (without newline) and its parse.
    pub fn call(&mut self, req: &Request) -> Result<(String, Response), ClientError> {
        let mut line = serde_json::to_vec(req).map_err(ClientError::BadResponse)?;
        line.push(b'\n');
        // A server that refuses us (permission denied) answers and closes at once, so
        // the write may fail: its answer is still there to read.
        let written = self.writer.write_all(&line);
        let mut resp = String::new();
        match self.reader.read_line(&mut resp) {
            Ok(0) | Err(_) if written.is_err() => return Err(written.unwrap_err().into()),
            Ok(0) => return Err(ClientError::Closed),
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let resp = resp.trim_end().to_string();
        let parsed = serde_json::from_str(&resp).map_err(ClientError::BadResponse)?;
        Ok((resp, parsed))
    }
}

/// Names what is wrong with `path` when connecting to it failed with `e`.
fn connect_error(path: &Path, e: std::io::Error) -> ClientError {
    use std::io::ErrorKind;
    let path_buf = || path.to_path_buf();
    match std::fs::metadata(path) {
        Err(m) if m.kind() == ErrorKind::NotFound => ClientError::Missing { path: path_buf() },
        Ok(m) if m.is_dir() => ClientError::IsDirectory { path: path_buf() },
        Ok(m) if !m.file_type().is_socket() => ClientError::NotASocket { path: path_buf() },
        _ => match e.kind() {
            ErrorKind::NotFound => ClientError::Missing { path: path_buf() },
            ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                path: path_buf(),
                source: e,
            },
            ErrorKind::ConnectionRefused => ClientError::Refused { path: path_buf() },
            _ => ClientError::Connect {
                path: path_buf(),
                source: e,
            },
        },
    }
}
