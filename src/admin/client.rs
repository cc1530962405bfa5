//! The client side of the admin socket, used by `twinlun ctl`: blocking, one request
//! and one response per call.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the admin socket {path} (is `twinlun serve` running?): {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin socket i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection without answering")]
    Closed,
    #[error("the server sent a response this client does not understand: {0}")]
    BadResponse(#[source] serde_json::Error),
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
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
