//! The real `printjob-gateway` binary as a child process, for what only a process can show:
//! the command line, exit codes, signals, and every log line it writes.

use std::{
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::oneshot,
};

/// The path of the binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_printjob-gateway");

/// The most memory a gateway process may ever hold in the tests that measure it. It idles near
/// 10 MiB; a gateway that buffered a 20 MB body, or a message per hostile stream, would pass this
/// at once.
pub const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

/// A running gateway process.
pub struct GatewayProcess {
    child: Child,
    /// Where its gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// Where its admin listener listens.
    pub admin_addr: SocketAddr,
    output: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

// === impl GatewayProcess ===

impl GatewayProcess {
    /// Starts the binary on `127.0.0.1:0` (unless `args` name a `--listen` of their own) with
    /// JSON logs and `args`, and waits for the log line that says it is serving (which names the
    /// bound addresses).
    ///
    /// The process sees only the variables in `env`: none of the caller's (`HTTPS_PROXY`,
    /// `PRINTJOB_GATEWAY_*`, `OTEL_*`, `RUST_LOG`) leak into a test.
    pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_binary(BINARY, args, env).await
    }

    /// [`GatewayProcess::spawn`] with another build of the binary, such as the release one.
    pub async fn spawn_binary(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(binary)
            .args(listen)
            .args(["--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway binary starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (serving_tx, serving_rx) = oneshot::channel();
        let readers = vec![
            collect(
                child.stdout.take().unwrap(),
                output.clone(),
                Some(serving_tx),
            ),
            collect(child.stderr.take().unwrap(), output.clone(), None),
        ];
        let serving: serde_json::Value = tokio::time::timeout(Duration::from_secs(30), serving_rx)
            .await
            .expect("the gateway reports that it is serving")
            .expect("the gateway logs a serving line before it exits");
        let addr = |field: &str| serving[field].as_str().unwrap().parse().unwrap();
        Self {
            grpc_addr: addr("grpc"),
            admin_addr: addr("admin"),
            child,
            output,
            readers,
        }
    }

    /// Waits until a line the process wrote contains `needle`, failing the test after `within`.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) {
        let logged = async {
            while !self
                .output
                .lock()
                .unwrap()
                .iter()
                .any(|line| line.contains(needle))
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(within, logged)
            .await
            .unwrap_or_else(|_| panic!("the gateway logs {needle:?}"));
    }

    /// The most memory the process has held so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// The memory the process holds now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// How many of the process's threads are named `name` (as `/proc/<pid>/task/*/comm` shows
    /// it: at most 15 bytes).
    pub fn threads_named(&self, name: &str) -> usize {
        let pid = self.child.id().expect("the process is running");
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    fn status_kib(&self, field: &str) -> u64 {
        let pid = self.child.id().expect("the process is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Sends SIGTERM (or another signal) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process is running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for the process to exit, at most `within`.
    pub async fn terminate(self, within: Duration) -> (ExitStatus, String) {
        self.signal("TERM");
        self.wait(within).await
    }

    /// Waits for the process to exit, at most `within`, and returns everything it wrote.
    pub async fn wait(mut self, within: Duration) -> (ExitStatus, String) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the process exits in time")
            .unwrap();
        for reader in self.readers.drain(..) {
            reader.await.unwrap();
        }
        let output = self.output.lock().unwrap().join("\n");
        (status, output)
    }
}

fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    output: Arc<Mutex<Vec<String>>>,
    mut serving: Option<oneshot::Sender<serde_json::Value>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if serving.is_some()
                && let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                && json["message"] == "printjob-gateway serving"
            {
                let _ = serving.take().unwrap().send(json);
            }
            output.lock().unwrap().push(line);
        }
    })
}
