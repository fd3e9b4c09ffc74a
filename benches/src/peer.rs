//! [`Peer`]: the PyTorch-eager implementation of the same routed forward
//! (`benches/real-model/torch_peer.py`), run as a subprocess that answers one JSON request per
//! line, so that `bench-paired` can time it and this library in interleaved rounds on the same
//! checkpoint.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

/// The peer script, relative to the workspace root.
pub const PEER_SCRIPT: &str = "benches/real-model/torch_peer.py";

/// A running peer process.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The peer's `ready` line: torch and transformers versions, threads, dtype.
    pub ready: Value,
}

impl Peer {
    /// Starts `python script --model model --threads threads --dtype dtype` and waits for its
    /// `ready` line.
    pub fn start(
        python: &str,
        script: &Path,
        model: &Path,
        threads: usize,
        dtype: &str,
    ) -> Result<Self, String> {
        let mut child = Command::new(python)
            .arg(script)
            .arg("--model")
            .arg(model)
            .args(["--threads", &threads.to_string(), "--dtype", dtype])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the peer `{python} {}`: {e}", script.display()))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut peer = Self {
            child,
            stdin,
            stdout,
            ready: Value::Null,
        };
        peer.ready = peer.read_line()?;
        if peer.ready["ready"] != json!(true) {
            return Err(format!("the peer did not start: {}", peer.ready));
        }
        Ok(peer)
    }

    /// Sends `request` and returns the reply; a reply with an `error` field is an error.
    pub fn request(&mut self, request: &Value) -> Result<Value, String> {
        writeln!(self.stdin, "{request}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("the peer stopped reading: {e}"))?;
        let reply = self.read_line()?;
        match reply.get("error") {
            Some(error) => Err(format!("the peer rejected {request}: {error}")),
            None => Ok(reply),
        }
    }

    fn read_line(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| format!("reading the peer: {e}"))?;
        if read == 0 {
            return Err("the peer exited".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("the peer wrote `{line}`: {e}"))
    }

    /// `"torch 2.x, transformers 5.x, N threads, dtype"`, for tables.
    pub fn describe(&self) -> String {
        format!(
            "PyTorch {} eager (transformers {}, Python {}), {} threads, {}",
            self.ready["torch"].as_str().unwrap_or("?"),
            self.ready["transformers"].as_str().unwrap_or("?"),
            self.ready["python"].as_str().unwrap_or("?"),
            self.ready["threads"],
            self.ready["dtype"].as_str().unwrap_or("?"),
        )
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}
