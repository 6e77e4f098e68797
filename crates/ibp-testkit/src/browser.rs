//! A real headless Chromium driven over the DevTools protocol, for the status page tests.
//!
//! The browser runs in its own profile directory with every background service off, and
//! it cannot reach anything but loopback: host names other than `localhost` do not resolve
//! and every non-loopback connection goes to a dead local proxy. Console errors, uncaught
//! exceptions, failed requests and HTTP error responses are collected, so a test can assert
//! that a page loads cleanly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// A browser or protocol problem.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// No Chromium binary.
    #[error(
        "chromium not found: ./run test installs it (Debian package chromium), or set CHROMIUM_BIN"
    )]
    NotFound,
    /// Starting or talking to the browser failed.
    #[error("browser: {0}")]
    Protocol(String),
    /// A command answered an error, or a script threw.
    #[error("{method}: {message}")]
    Command {
        /// The DevTools method.
        method: String,
        /// What the browser said.
        message: String,
    },
    /// A wait ran out.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

fn proto(e: impl std::fmt::Display) -> BrowserError {
    BrowserError::Protocol(e.to_string())
}

/// The Chromium binary: `CHROMIUM_BIN`, else `chromium`, `chromium-browser` or
/// `google-chrome` on the path.
pub fn chromium_bin() -> Result<PathBuf, BrowserError> {
    if let Ok(p) = std::env::var("CHROMIUM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(BrowserError::NotFound)
}

type Pending = Arc<Mutex<std::collections::HashMap<u64, oneshot::Sender<Value>>>>;

/// Something the page did wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct PageProblem {
    /// `console`, `exception`, `request-failed` or `http-error`.
    pub kind: String,
    /// What happened.
    pub text: String,
}

/// A headless Chromium with one page.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next: u64,
    problems: Arc<Mutex<Vec<PageProblem>>>,
    loads: Arc<tokio::sync::Notify>,
    reader: tokio::task::JoinHandle<()>,
    session: Option<String>,
}

impl Browser {
    /// Starts Chromium and attaches to a blank page.
    pub async fn start() -> Result<Browser, BrowserError> {
        let bin = chromium_bin()?;
        let profile = tempfile::tempdir().map_err(proto)?;
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-domain-reliability",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--disable-client-side-phishing-detection",
                "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
                "--metrics-recording-only",
                "--no-pings",
                "--mute-audio",
                "--hide-scrollbars",
                // Traffic stays home: nothing but loopback resolves or connects.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
                "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=127.0.0.0/8;localhost;[::1]",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| proto(format!("{}: {e}", bin.display())))?;
        let stderr = child.stderr.take().ok_or_else(|| proto("no stderr"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent
                    && line.contains("DevTools listening on")
                    && let Some(i) = line.find("ws://")
                {
                    let _ = tx.send(line[i..].trim().to_string());
                    sent = true;
                }
            }
        });
        let ws = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(ws) => ws,
            Err(_) => {
                let _ = child.kill();
                return Err(proto(
                    "Chromium did not print its DevTools address within 30 s",
                ));
            }
        };
        // The browser's socket; the page is a target attached to it (flattened sessions).
        let (socket, _) = tokio_tungstenite::connect_async(ws.as_str())
            .await
            .map_err(|e| proto(format!("{ws}: {e}")))?;
        let (mut sink, mut stream) = socket.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let problems: Arc<Mutex<Vec<PageProblem>>> = Arc::default();
        let loads = Arc::new(tokio::sync::Notify::new());
        let (p2, pr2, l2) = (pending.clone(), problems.clone(), loads.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p2.lock().ok().and_then(|mut p| p.remove(&id)) {
                        let _ = tx.send(v);
                    }
                    continue;
                }
                let problem = |kind: &str, text: String| PageProblem {
                    kind: kind.into(),
                    text,
                };
                let found = match v["method"].as_str().unwrap_or("") {
                    "Page.loadEventFired" => {
                        l2.notify_waiters();
                        None
                    }
                    "Runtime.consoleAPICalled" if v["params"]["type"] == "error" => {
                        Some(problem("console", v["params"]["args"].to_string()))
                    }
                    "Runtime.exceptionThrown" => Some(problem(
                        "exception",
                        v["params"]["exceptionDetails"].to_string(),
                    )),
                    "Log.entryAdded" if v["params"]["entry"]["level"] == "error" => {
                        Some(problem("console", v["params"]["entry"]["text"].to_string()))
                    }
                    // An event stream closed by a navigation is not a failure of the page.
                    "Network.loadingFailed"
                        if v["params"]["canceled"] != true
                            && v["params"]["type"] != "EventSource" =>
                    {
                        Some(problem("request-failed", v["params"].to_string()))
                    }
                    "Network.responseReceived"
                        if v["params"]["response"]["status"].as_u64().unwrap_or(0) >= 400 =>
                    {
                        Some(problem(
                            "http-error",
                            format!(
                                "{} {}",
                                v["params"]["response"]["status"], v["params"]["response"]["url"]
                            ),
                        ))
                    }
                    _ => None,
                };
                if let Some(p) = found
                    && let Ok(mut all) = pr2.lock()
                {
                    all.push(p);
                }
            }
        });
        let mut b = Browser {
            child,
            _profile: profile,
            out,
            pending,
            next: 0,
            problems,
            loads,
            reader,
            session: None,
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await?;
        b.session = Some(
            attached["sessionId"]
                .as_str()
                .ok_or_else(|| proto(format!("no session in {attached}")))?
                .to_string(),
        );
        for m in [
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
            "Network.enable",
        ] {
            b.call(m, json!({})).await?;
        }
        Ok(b)
    }

    /// Sends a DevTools command and returns its `result`.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.next += 1;
        let id = self.next;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| proto("poisoned"))?
            .insert(id, tx);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let msg = msg.to_string();
        self.out
            .send(Message::Text(msg.into()))
            .map_err(|_| proto("the browser connection is closed"))?;
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| BrowserError::Timeout(Duration::from_secs(30), method.to_string()))?
            .map_err(|_| proto("the browser connection is closed"))?;
        if let Some(e) = v.get("error") {
            return Err(BrowserError::Command {
                method: method.into(),
                message: e.to_string(),
            });
        }
        Ok(v["result"].clone())
    }

    /// Sets the viewport: `mobile` emulates a phone (touch, device width).
    pub async fn viewport(
        &mut self,
        width: u32,
        height: u32,
        mobile: bool,
    ) -> Result<(), BrowserError> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await?;
        Ok(())
    }

    /// Navigates and waits for the load event.
    pub async fn goto(&mut self, url: &str) -> Result<(), BrowserError> {
        let loads = self.loads.clone();
        let loaded = loads.notified();
        tokio::pin!(loaded);
        loaded.as_mut().enable();
        self.call("Page.navigate", json!({"url": url})).await?;
        tokio::time::timeout(Duration::from_secs(30), loaded)
            .await
            .map_err(|_| BrowserError::Timeout(Duration::from_secs(30), format!("load of {url}")))
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value.
    pub async fn eval(&mut self, expr: &str) -> Result<Value, BrowserError> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(BrowserError::Command {
                method: "Runtime.evaluate".into(),
                message: format!("{expr}: {e}"),
            });
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `expr` is truthy, evaluating it every 20 ms.
    pub async fn wait_for(&mut self, expr: &str, within: Duration) -> Result<Value, BrowserError> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expr).await?;
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout(within, expr.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes a PNG screenshot of the page to `path`: the whole page, cut at `max_height`
    /// CSS pixels.
    pub async fn screenshot(&mut self, path: &Path, max_height: f64) -> Result<(), BrowserError> {
        let m = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = &m["cssContentSize"];
        let width = size["width"].as_f64().unwrap_or(1280.0);
        let height = size["height"].as_f64().unwrap_or(900.0).min(max_height);
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true,
                       "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}),
            )
            .await?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or(""))
            .map_err(proto)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(proto)?;
        }
        std::fs::write(path, data).map_err(proto)
    }

    /// The problems seen so far, emptied.
    pub fn take_problems(&self) -> Vec<PageProblem> {
        self.problems
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.reader.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
