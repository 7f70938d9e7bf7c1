//! The control channel: a Unix socket that cuts the power on request, for a harness that runs
//! faultfs as a separate process.
//!
//! Protocol: one line per connection. `cut\n` is answered `ok cut <n> names <m>\n` once the
//! backing directory holds the durable state (so the harness may restart its program at once);
//! `ping\n` is answered `ok\n`; anything else, or a failed cut, `error <sentence>\n`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;

use crate::error::{Error, Result};
use crate::mount::PowerSwitch;

pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Listens on `path` (replacing a stale socket there) and serves in a background thread
    /// for the life of the process.
    ///
    /// # Errors
    /// `Error::Io` if the socket cannot be bound.
    pub fn start(path: &Path, switch: PowerSwitch) -> Result<ControlServer> {
        if path.exists() {
            std::fs::remove_file(path).map_err(Error::io(format!("removing the stale socket {}", path.display())))?;
        }
        let listener = UnixListener::bind(path).map_err(Error::io(format!("binding {}", path.display())))?;
        thread::Builder::new()
            .name("faultfs-control".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    // One client at a time: cuts are serialized anyway.
                    serve(stream, &switch);
                }
            })
            .map_err(Error::io("starting the control thread"))?;
        Ok(ControlServer { path: path.to_path_buf() })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(stream: UnixStream, switch: &PowerSwitch) {
    let mut line = String::new();
    let Ok(reader) = stream.try_clone() else { return };
    if BufReader::new(reader).read_line(&mut line).is_err() {
        return;
    }
    let answer = match line.trim() {
        "cut" => match switch.power_cut() {
            Ok(report) => format!("ok cut {} names {}\n", report.cut, report.names),
            Err(e) => format!("error {e}\n"),
        },
        "ping" => "ok\n".to_string(),
        other => format!("error unknown command {other:?}; commands are cut and ping\n"),
    };
    let _ = (&stream).write_all(answer.as_bytes());
}

/// Sends `command` to the control socket and returns the `ok …` answer.
///
/// # Errors
/// `Error::Io` if the socket cannot be reached, `Error::Control` for an `error …` answer.
pub fn request(socket: &Path, command: &str) -> Result<String> {
    let stream = UnixStream::connect(socket).map_err(Error::io(format!("connecting to {}", socket.display())))?;
    (&stream).write_all(format!("{command}\n").as_bytes()).map_err(Error::io("sending the command"))?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(Error::io("reading the answer"))?;
    let answer = answer.trim_end().to_string();
    if answer.starts_with("ok") {
        Ok(answer)
    } else {
        Err(Error::Control(answer))
    }
}
