//! A real headless browser for the status page's test: Debian's `chromium`, driven over the
//! Chrome DevTools Protocol (one websocket to the browser, one flattened session per page).
//!
//! Chromium runs as root here, which needs `--no-sandbox`; `--disable-gpu` because there is no
//! GPU; a fresh `--user-data-dir` per browser so runs never share a profile or a lock. It runs
//! in a process group of its own, and [`Browser`]'s `Drop` kills that group (by its id), so no
//! renderer outlives the test, also when the test fails.
#![allow(dead_code)] // used by one test file

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// A headless Chromium and the DevTools session of the one page it shows.
pub struct Browser {
    /// Declared first, so dropped first: the websocket's `Browser.close` goes out before.
    socket: WebSocket<TcpStream>,
    process: Process,
    /// Removed after the browser is gone.
    _profile: tempfile::TempDir,
    next_id: u64,
    /// The flattened session of the page target.
    session: Option<String>,
}

/// How long any one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Browser {
    /// Starts `chromium` (headless) and connects to its DevTools endpoint.
    ///
    /// # Panics
    /// With a message saying what to do, when Chromium is missing or does not come up.
    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--disable-component-update",
                "--hide-scrollbars",
                "--mute-audio",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromium ({e}): the status page test needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
            });
        // From here on, a panic kills the browser too.
        let mut process = Process(child);
        let stderr = process.0.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
                eprintln!("[chromium] {line}");
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let status = process.0.try_wait().ok().flatten();
            panic!("chromium did not open its DevTools endpoint within 60 s (exit status {status:?}); its log is above")
        });
        let host = url.trim_start_matches("ws://").split('/').next().unwrap().to_string();
        let stream = TcpStream::connect(&host).unwrap_or_else(|e| panic!("connecting to chromium at {host}: {e}"));
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
        let (socket, _) = tungstenite::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("the DevTools websocket handshake with {url} failed: {e}"));
        // From now on reads wake up every 200 ms, so every wait can check its deadline.
        socket.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Browser { socket, process, _profile: profile, next_id: 0, session: None }
    }

    /// Opens `url` in a new page and attaches to it; waits until the document is loaded.
    pub fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("a target id").to_string();
        let attached = self.call("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}));
        self.session = Some(attached["sessionId"].as_str().expect("a session id").to_string());
        self.call("Page.enable", json!({}));
        self.call("Runtime.enable", json!({}));
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for("the page to load", Duration::from_secs(30), "document.readyState === 'complete'");
    }

    /// Sends one DevTools command (to the page's session once there is one) and returns its
    /// result; events arriving meanwhile are skipped.
    ///
    /// # Panics
    /// When the browser answers with an error, or not within [`COMMAND_TIMEOUT`].
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        self.socket.send(Message::text(command.to_string())).unwrap_or_else(|e| panic!("sending {method}: {e}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "chromium did not answer {method} within {COMMAND_TIMEOUT:?}");
            let message = match self.socket.read() {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(e) => panic!("reading chromium's answer to {method}: {e}"),
            };
            let answer: Value = serde_json::from_str(message.as_str()).unwrap();
            if answer["id"] != json!(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                panic!("chromium refused {method}: {error}");
            }
            return answer["result"].clone();
        }
    }

    /// The value of a JavaScript expression in the page.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}));
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("evaluating {expression:?} in the page threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` every 250 ms until it is truthy, and returns that value.
    ///
    /// # Panics
    /// After `timeout`, naming `what` and the last value seen.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, expression: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(Instant::now() < deadline, "waited {timeout:?} for {what}; last value {value}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Saves a PNG screenshot of the whole page (not only the window) to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let height = self.eval("Math.ceil(document.documentElement.scrollHeight)").as_u64().unwrap_or(900);
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("the screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Politely first (a browser that closes itself removes its helpers too); `Process`
        // then makes sure.
        let _ = self.socket.send(Message::text(json!({"id": 0, "method": "Browser.close"}).to_string()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.process.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The browser process, leader of its own process group (`process_group(0)`: the group's id
/// is its pid). Dropped, it kills that whole group by id (renderers and helpers included),
/// then reaps the browser.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // killpg, typed, never the `kill` command: procps reads `kill -KILL -<pgid>` as options
        // and signals another group (`kill(-2, …)`) or every process (`kill(-1, …)`, which as
        // root is everything on the machine: it happened once).
        let group = i32::try_from(self.0.id()).expect("a pid fits an i32");
        assert!(group > 1, "not a process group of ours: {group}");
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
