//! The `supervised` backend: Orchestrator runs ComfyUI as its own child.
//!
//! One task (the actor) owns the child and takes commands one at a time, so concurrent starts start once and a
//! stop never races a restart. ComfyUI runs in its own process group (a job object on Windows) so that stopping
//! it also stops what it started. After an unexpected exit it is restarted with capped exponential back-off;
//! after `crash_burst` quick exits within `crash_window` it is reported `crash_looping` and left alone until
//! someone starts it again. Stopping asks first (SIGTERM to the group) and forces after `stop_grace`.
//! stdout and stderr go to a size-rotated log (`comfyui.log`, `comfyui.log.1`, …).

use std::collections::VecDeque;
use std::io::Write;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use process_wrap::tokio::{ChildWrapper, CommandWrap};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::{ExitCause, ExitRecord, LaunchSpec, ServiceState, ServiceStatus};

/// When to restart and when to give up.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// The first restart waits this long; each quick exit in a row doubles it.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run shorter than this counts as a crash at start-up.
    pub quick_exit: Duration,
    /// This many quick exits within `crash_window` make a crash loop.
    pub crash_burst: usize,
    pub crash_window: Duration,
    /// How long a stop waits after asking before it forces.
    pub stop_grace: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            quick_exit: Duration::from_secs(10),
            crash_burst: 5,
            crash_window: Duration::from_secs(120),
            stop_grace: Duration::from_secs(15),
        }
    }
}

/// The log ComfyUI writes through the supervisor: rotated at 10 MiB, five old files kept.
pub const LOG_ROTATE_BYTES: usize = 10 * 1024 * 1024;
pub const LOG_KEEP: usize = 5;
/// How many of the last log lines an exit record keeps.
pub const EXIT_LOG_LINES: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot open the log {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error("the supervisor is not running")]
    Gone,
}

enum Command {
    Start(oneshot::Sender<Result<(), SupervisorError>>),
    Stop(oneshot::Sender<()>),
    /// The process with this pid is alive but hung: end its whole tree and let the restart policy act.
    KillHung(u32),
}

/// A handle to the supervisor task; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<ServiceStatus>,
}

impl Supervisor {
    /// Starts the supervisor task (ComfyUI itself stays stopped until [`Supervisor::start`]).
    pub fn spawn(spec: LaunchSpec, policy: RestartPolicy) -> Self {
        let (commands, inbox) = mpsc::channel(16);
        let (status_tx, status) =
            watch::channel(ServiceStatus::simple("supervised", ServiceState::Stopped));
        tokio::spawn(Actor::new(spec, policy, status_tx).run(inbox));
        Self { commands, status }
    }

    /// Starts ComfyUI; a no-op when it runs. Answers once the process is started (not once it is healthy).
    pub async fn start(&self) -> Result<(), SupervisorError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Start(reply))
            .await
            .map_err(|_| SupervisorError::Gone)?;
        answer.await.map_err(|_| SupervisorError::Gone)?
    }

    /// Stops ComfyUI and any pending restart; a no-op when it is stopped. Answers once it has exited.
    pub async fn stop(&self) -> Result<(), SupervisorError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Stop(reply))
            .await
            .map_err(|_| SupervisorError::Gone)?;
        answer.await.map_err(|_| SupervisorError::Gone)
    }

    pub fn status(&self) -> ServiceStatus {
        self.status.borrow().clone()
    }

    /// The status as it changes.
    pub fn subscribe(&self) -> watch::Receiver<ServiceStatus> {
        self.status.clone()
    }

    /// Ends the process tree of the run with `pid` (if it is still the current one): it stopped answering.
    pub async fn kill_hung(&self, pid: u32) {
        let _ = self.commands.send(Command::KillHung(pid)).await;
    }
}

/// A running child and what the actor needs to know about it.
struct Running {
    child: Box<dyn ChildWrapper>,
    started: Instant,
    /// The tasks copying its output to the log.
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

struct Actor {
    spec: LaunchSpec,
    policy: RestartPolicy,
    status: watch::Sender<ServiceStatus>,
    log: Option<Arc<Mutex<FileRotate<AppendCount>>>>,
    running: Option<Running>,
    /// Set while a restart is scheduled.
    restart_at: Option<tokio::time::Instant>,
    /// Start times of the recent quick exits, for crash-loop detection.
    quick_exits: VecDeque<Instant>,
    /// Quick exits in a row, for the back-off.
    consecutive_quick: u32,
    restarts: u32,
    /// The pid of a run ended because it hung, so its exit is recorded as such.
    hung: Option<u32>,
}

impl Actor {
    fn new(spec: LaunchSpec, policy: RestartPolicy, status: watch::Sender<ServiceStatus>) -> Self {
        Self {
            spec,
            policy,
            status,
            log: None,
            running: None,
            restart_at: None,
            quick_exits: VecDeque::new(),
            consecutive_quick: 0,
            hung: None,
            restarts: 0,
        }
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        loop {
            let restart_at = self.restart_at;
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(Command::Start(reply)) => {
                        let _ = reply.send(self.start().await);
                    }
                    Some(Command::Stop(reply)) => {
                        self.stop().await;
                        let _ = reply.send(());
                    }
                    Some(Command::KillHung(pid)) => self.kill_hung(pid),
                    None => {
                        // Orchestrator is shutting down: ComfyUI goes with it.
                        self.stop().await;
                        return;
                    }
                },
                exit = wait_parent(&mut self.running) => self.exited(exit).await,
                () = sleep_until(restart_at) => {
                    self.restart_at = None;
                    self.restarts += 1;
                    if let Err(error) = self.spawn_child() {
                        tracing::error!(%error, "restarting ComfyUI failed");
                        self.exited(Err(std::io::Error::other(error.to_string()))).await;
                    }
                }
            }
        }
    }

    async fn start(&mut self) -> Result<(), SupervisorError> {
        if self.running.is_some() {
            return Ok(());
        }
        // A person starting it again is the signal to try again after a crash loop.
        self.restart_at = None;
        self.quick_exits.clear();
        self.consecutive_quick = 0;
        self.spawn_child()
    }

    fn spawn_child(&mut self) -> Result<(), SupervisorError> {
        let log = self.log()?;
        let mut command = CommandWrap::with_new(&self.spec.program, |command| {
            command
                .args(&self.spec.args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            command.env("PYTHONUNBUFFERED", "1");
            for name in &self.spec.env_remove {
                command.env_remove(name);
            }
            if let Some(dir) = &self.spec.working_dir {
                command.current_dir(dir);
            }
        });
        #[cfg(unix)]
        command.wrap(process_wrap::tokio::ProcessGroup::leader());
        #[cfg(windows)]
        command.wrap(process_wrap::tokio::JobObject);
        command.wrap(process_wrap::tokio::KillOnDrop);
        let mut child = command.spawn().map_err(|source| SupervisorError::Spawn {
            program: self.spec.program.clone(),
            source,
        })?;
        let mut pumps = Vec::new();
        if let Some(stdout) = child.stdout().take() {
            pumps.push(tokio::spawn(copy_to_log(stdout, log.clone())));
        }
        if let Some(stderr) = child.stderr().take() {
            pumps.push(tokio::spawn(copy_to_log(stderr, log)));
        }
        let pid = child.id();
        tracing::info!(pid, program = %self.spec.program, "ComfyUI started");
        self.running = Some(Running {
            child,
            started: Instant::now(),
            pumps,
        });
        self.publish(ServiceState::Running, pid, None);
        Ok(())
    }

    fn log(&mut self) -> Result<Arc<Mutex<FileRotate<AppendCount>>>, SupervisorError> {
        if let Some(log) = &self.log {
            return Ok(log.clone());
        }
        let path = &self.spec.log_file;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| SupervisorError::Log {
                path: path.display().to_string(),
                source,
            })?;
        }
        let log = Arc::new(Mutex::new(FileRotate::new(
            path,
            AppendCount::new(LOG_KEEP),
            ContentLimit::BytesSurpassed(LOG_ROTATE_BYTES),
            Compression::None,
            None,
        )));
        self.log = Some(log.clone());
        Ok(log)
    }

    /// ComfyUI's main process ended: record it, then restart, or give up on a crash loop.
    async fn exited(&mut self, exit: std::io::Result<ExitStatus>) {
        let Some(mut run) = self.running.take() else {
            // A failed restart: count it like a quick exit.
            self.after_exit(Duration::ZERO, None, ExitCause::Exited);
            return;
        };
        // What ComfyUI started dies with it, so nothing holds its port or the GPU.
        let _ = run.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(2), run.child.wait()).await;
        // Its last words reach the log before the exit is recorded with them.
        for pump in run.pumps.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), pump).await;
        }
        let uptime = run.started.elapsed();
        let status = exit.ok();
        // Set only by a hang kill of this run (a new run clears nothing: every exit takes it).
        let cause = if self.hung.take().is_some() {
            ExitCause::Unresponsive
        } else {
            ExitCause::Exited
        };
        self.after_exit(uptime, status, cause);
    }

    fn after_exit(&mut self, uptime: Duration, status: Option<ExitStatus>, cause: ExitCause) {
        let record = ExitRecord {
            cause,
            code: status.and_then(|s| s.code()),
            signal: status.and_then(signal_of),
            at: Utc::now(),
            uptime_ms: uptime.as_millis() as u64,
            log_tail: self.log_tail(),
        };
        tracing::warn!(
            code = record.code,
            signal = record.signal,
            uptime_ms = record.uptime_ms,
            ?cause,
            "ComfyUI exited"
        );
        let now = Instant::now();
        if uptime < self.policy.quick_exit {
            self.quick_exits.push_back(now);
            self.consecutive_quick += 1;
        } else {
            self.consecutive_quick = 0;
        }
        while self
            .quick_exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.crash_window)
        {
            self.quick_exits.pop_front();
        }
        if self.quick_exits.len() >= self.policy.crash_burst {
            tracing::error!(
                exits = self.quick_exits.len(),
                "ComfyUI keeps crashing; not restarting it again"
            );
            self.publish(ServiceState::CrashLooping, None, Some(record));
            return;
        }
        let exponent = self.consecutive_quick.saturating_sub(1).min(16);
        let delay = self
            .policy
            .backoff_initial
            .saturating_mul(1 << exponent)
            .min(self.policy.backoff_max);
        self.restart_at = Some(tokio::time::Instant::now() + delay);
        self.publish(ServiceState::Starting, None, Some(record));
    }

    /// Asks ComfyUI's process group to stop, forces it after the grace period, and cancels pending restarts.
    async fn stop(&mut self) {
        self.restart_at = None;
        self.hung = None;
        let Some(mut run) = self.running.take() else {
            let status = self.status.borrow().status;
            if status != ServiceState::Stopped {
                self.publish(ServiceState::Stopped, None, None);
            }
            return;
        };
        let pid = run.child.id();
        self.publish(ServiceState::Stopping, pid, None);
        #[cfg(unix)]
        let asked = run.child.signal(libc::SIGTERM).is_ok();
        #[cfg(not(unix))]
        let asked = false;
        let graceful = asked
            && tokio::time::timeout(self.policy.stop_grace, run.child.inner_mut().wait())
                .await
                .is_ok();
        if !graceful {
            tracing::warn!(
                pid,
                "ComfyUI did not stop in time; killing its process group"
            );
        }
        let _ = run.child.start_kill();
        let status = tokio::time::timeout(Duration::from_secs(5), run.child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        let record = ExitRecord {
            cause: ExitCause::Stopped,
            code: status.and_then(|s| s.code()),
            signal: status.and_then(signal_of),
            at: Utc::now(),
            uptime_ms: run.started.elapsed().as_millis() as u64,
            log_tail: self.log_tail(),
        };
        tracing::info!(pid, graceful, "ComfyUI stopped");
        self.publish(ServiceState::Stopped, None, Some(record));
    }

    /// A hung ComfyUI (a stopped or deadlocked process cannot answer SIGTERM): killed with its whole process group
    /// at once; its exit is then handled like a crash, so the restart policy applies.
    fn kill_hung(&mut self, pid: u32) {
        let Some(run) = self.running.as_mut() else {
            return;
        };
        if run.child.id() != Some(pid) {
            return;
        }
        tracing::warn!(pid, "ComfyUI stopped answering: ending its process tree");
        self.hung = Some(pid);
        let _ = run.child.start_kill();
        self.publish(ServiceState::Unresponsive, Some(pid), None);
    }

    /// The last lines ComfyUI wrote before it ended: why it died is usually there.
    fn log_tail(&self) -> Vec<String> {
        let lines = super::logs::tail(&self.spec.log_file, EXIT_LOG_LINES).unwrap_or_default();
        super::logs::masked(lines, &self.spec.masked)
    }

    fn publish(&mut self, state: ServiceState, pid: Option<u32>, exit: Option<ExitRecord>) {
        let restarts = self.restarts;
        let next_start = self.restart_at.map(|at| {
            let wait = at.saturating_duration_since(tokio::time::Instant::now());
            (Utc::now() + wait).to_rfc3339()
        });
        self.status.send_modify(|status| {
            status.status = state;
            status.pid = pid;
            status.restarts = restarts;
            status.since = Some(Utc::now().to_rfc3339());
            status.next_start = next_start;
            if exit.is_some() {
                status.last_exit = exit;
            }
        });
    }
}

/// Waits for the main process of the running child (not its whole group: a lingering grandchild must not hide
/// that ComfyUI itself is gone). Pending forever when nothing runs.
async fn wait_parent(running: &mut Option<Running>) -> std::io::Result<ExitStatus> {
    match running {
        Some(run) => run.child.inner_mut().wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(unix)]
fn signal_of(status: ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(&status)
}

#[cfg(not(unix))]
fn signal_of(_status: ExitStatus) -> Option<i32> {
    None
}

/// Copies one of the child's output streams into the log as it comes.
async fn copy_to_log(mut stream: impl AsyncRead + Unpin, log: Arc<Mutex<FileRotate<AppendCount>>>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                // A local file append is short; it is done inline rather than on a blocking thread.
                let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let _ = log.write_all(&buffer[..n]);
                let _ = log.flush();
            }
        }
    }
}
