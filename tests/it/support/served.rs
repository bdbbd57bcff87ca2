//! The `orchestrator` binary as a user runs it: a real child process, with its log lines collected.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::wait_until;

pub const BINARY: &str = env!("CARGO_BIN_EXE_orchestrator");

pub fn command(dir: &std::path::Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key, value);
    }
    // On a PostgreSQL run, a process given a data folder keeps its rows in that folder's database.
    if crate::support::on_postgres()
        && !env.iter().any(|(key, _)| *key == "DATABASE_URL")
        && let Some((_, data)) = env.iter().find(|(key, _)| *key == "DATA_DIR")
    {
        command.env(
            "DATABASE_URL",
            crate::support::database_for(std::path::Path::new(data)),
        );
    }
    command
}

/// The server as a child process; its stdout lines are collected as they come.
/// Waits for `child` to exit, at most `within`.
pub async fn exit_of(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let mut status = None;
    wait_until(within, "the process exits", || {
        status = child.try_wait().unwrap();
        std::future::ready(status.is_some())
    })
    .await;
    status.expect("it exited")
}

pub struct Served {
    pub child: Child,
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Served {
    pub fn start(dir: &std::path::Path, comfy_url: &str) -> Self {
        Self::start_with(dir, comfy_url, &[])
    }

    /// With more environment; stderr lines are collected too.
    pub fn start_with(dir: &std::path::Path, comfy_url: &str, extra: &[(&str, &str)]) -> Self {
        let data = dir.join("data");
        let mut env = vec![
            ("ORCH_BIND", "127.0.0.1:0"),
            // Tests run side by side: the editor's listener gets a port of its own too.
            ("ORCH_COMFY_BIND", "127.0.0.1:0"),
            ("COMFY_URL", comfy_url),
            ("DATA_DIR", data.to_str().unwrap()),
            ("LOG_FORMAT", "json"),
        ];
        env.extend_from_slice(extra);
        let mut child = command(dir, &env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let errors = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                errors.lock().unwrap().push(line);
            }
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && event["message"] == "Orchestrator listening"
                {
                    let _ = addr_tx.send(event["addr"].as_str().unwrap_or_default().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the server logs its address");
        Self {
            child,
            addr: addr.parse().unwrap(),
            lines,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Submits an API-format workflow and waits until its job has succeeded; answers the job.
    pub async fn run_workflow(&self, workflow: &Value) -> Value {
        super::run_workflow_at(&super::client(), &self.url(""), workflow).await
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Resident memory now and at its peak, in KiB, from `/proc`.
    #[cfg(target_os = "linux")]
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
