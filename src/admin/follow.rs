//! `twinlun ctl events`: follows the server's event stream and prints one line per
//! event until interrupted, the reader of its output goes away, or the server ends
//! the stream.
//!
//! A closed output is noticed even while no event comes: the wait watches stdout for
//! an error (a pipe whose reader has gone, as with `ctl events | head -n 1`) as well
//! as the socket for data, so a pipeline ends when its reader does.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::events::Event;

/// Exit statuses, as for every `ctl` command.
const OK: u8 = 0;
const REFUSED: u8 = 1;
const NO_SERVER: u8 = 3;

/// Follows the event stream of the server at `socket`, printing a line per event
/// (`json`: the event as one JSON object). Returns the exit status: 0 when the
/// output was closed, 1 when the server refused the stream, 3 when it could not be
/// reached or ended the stream.
pub fn follow(socket: &Path, json: bool) -> u8 {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "twinlun ctl: cannot connect to the admin socket {} (is `twinlun serve` running?): {e}",
                socket.display()
            );
            return NO_SERVER;
        }
    };
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("twinlun ctl: admin socket: {e}");
            return NO_SERVER;
        }
    };
    if let Err(e) = writer.write_all(b"{\"cmd\":\"events\"}\n") {
        eprintln!("twinlun ctl: admin socket: {e}");
        return NO_SERVER;
    }
    let fd = stream.as_raw_fd();
    let mut reader = BufReader::new(stream);
    let mut out = std::io::stdout().lock();
    let mut line = String::new();
    loop {
        if !reader.buffer().contains(&b'\n') {
            match wait(fd) {
                Ok(Ready::Socket) => {}
                Ok(Ready::OutputClosed) => return OK,
                Err(e) => {
                    eprintln!("twinlun ctl: waiting for events: {e}");
                    return NO_SERVER;
                }
            }
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => {
                eprintln!("twinlun ctl: the server ended the event stream");
                return NO_SERVER;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("twinlun ctl: reading events: {e}");
                return NO_SERVER;
            }
        }
        let text = match render(line.trim_end(), json) {
            Ok(t) => t,
            Err(Refused(message)) => {
                eprintln!("twinlun ctl: {message}");
                return REFUSED;
            }
        };
        // A write error means the reader of our output is gone (EPIPE: Rust ignores
        // SIGPIPE): that ends the command, quietly.
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return OK;
        }
    }
}

/// The server answered the request with an error instead of a stream.
struct Refused(String);

/// The line to print for one line of the stream.
fn render(line: &str, json: bool) -> Result<String, Refused> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| Refused(format!("the server sent a line that is not JSON: {e}")))?;
    if value.get("result").and_then(|r| r.as_str()) == Some("error") {
        let message = value
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("the server refused the event stream");
        return Err(Refused(message.to_string()));
    }
    match serde_json::from_value::<Event>(value.clone()) {
        Ok(event) if json => {
            Ok(serde_json::to_string(&event).unwrap_or_else(|_| value.to_string()))
        }
        Ok(event) => Ok(event.human()),
        // A kind this client does not know (a newer server): shown as sent, so
        // nothing is hidden.
        Err(_) if json => Ok(value.to_string()),
        Err(_) => Ok(format!("unknown-event {value}")),
    }
}

enum Ready {
    Socket,
    OutputClosed,
}

/// Waits until the socket has data (or is closed: a read tells) or stdout is a pipe
/// whose reader has gone.
fn wait(socket: i32) -> std::io::Result<Ready> {
    let mut fds = [
        libc::pollfd {
            fd: socket,
            events: libc::POLLIN,
            revents: 0,
        },
        // No events asked: POLLERR, POLLHUP and POLLNVAL are always reported, and
        // a pipe's write end reports POLLERR once its reader is gone.
        libc::pollfd {
            fd: libc::STDOUT_FILENO,
            events: 0,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a live array of two pollfd structs for the whole call and
        // its length is passed with it.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return Ok(Ready::OutputClosed);
        }
        if fds[0].revents != 0 {
            return Ok(Ready::Socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_render_as_json_or_for_a_person_and_errors_refuse() {
        let line = r#"{"result":"event","at_unix_ms":1700000000000,"kind":"restart","set":"r"}"#;
        assert_eq!(
            render(line, true).ok().unwrap(),
            r#"{"at_unix_ms":1700000000000,"kind":"restart","set":"r"}"#
        );
        assert_eq!(
            render(line, false).ok().unwrap(),
            "2023-11-14T22:13:20.000Z restart r"
        );
        let err = r#"{"result":"error","code":"not_found","message":"no stream"}"#;
        assert!(matches!(render(err, true), Err(Refused(m)) if m == "no stream"));
        let newer = r#"{"result":"event","at_unix_ms":1,"kind":"from_the_future"}"#;
        assert!(render(newer, false)
            .ok()
            .unwrap()
            .starts_with("unknown-event "));
    }
}
