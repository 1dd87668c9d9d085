//! What an end-to-end test on the moto emulator needs: a free loopback
//! port, a `moto_server` of its own (from `<repo>/.venv`, killed on drop),
//! SDK configs with static test credentials, plain HTTP/1.1 requests, and
//! the real `fanout` binary as a child process with its log and /metrics.
//! Loopback (127.0.0.1) only.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `fanout` binary cargo built for this test run.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_fanout");

/// A port nothing listens on right now, on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A plain HTTP/1.1 request on loopback; returns (status, body).
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1);
    Ok((status, body.to_string()))
}

/// The emulator's credentials and Region, and nothing of the caller's.
pub(crate) fn child_env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_CLOUDWATCH")
}

/// An SDK config for `endpoint` with static test credentials (a test
/// process cannot rely on the default chain finding any).
pub(crate) async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::v2026_01_12())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "e2e",
        ))
        .load()
        .await
}

/// A state machine named `pipeline` with `definition` on the emulator;
/// its ARN.
pub(crate) async fn state_machine(sfn: &aws_sdk_sfn::Client, definition: &str) -> String {
    sfn.create_state_machine()
        .name("pipeline")
        .definition(definition)
        .role_arn("arn:aws:iam::123456789012:role/pipeline")
        .send()
        .await
        .unwrap()
        .state_machine_arn()
        .to_string()
}

/// A moto server of our own, killed on drop.
pub(crate) struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub(crate) endpoint: String,
    /// Its port.
    pub(crate) port: u16,
}

impl Moto {
    /// Start `moto_server` on a free port, wait until it listens (30 s at
    /// most) and let its Step Functions run states.
    pub(crate) fn start() -> Moto {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/test.sh, which installs moto[server]==5.2.5 into .venv",
            bin.display()
        );
        let port = free_port();
        let child = child_env(&mut Command::new(&bin))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto_server");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Without this, moto's Step Functions never run a state (executions
        // stay RUNNING); with it, Wait states really wait.
        let (status, body) = http(
            port,
            "POST",
            "/moto-api/config",
            "application/json",
            "",
            r#"{"stepfunctions":{"execute_state_machine":true}}"#,
        )
        .expect("moto config request");
        assert!((200..300).contains(&status), "moto config: {status} {body}");
        moto
    }

    /// Create the IAM role `name` (Lambda's CreateFunction needs one that
    /// exists); returns its ARN. IAM's query protocol, by hand: the test
    /// has no IAM client.
    pub(crate) fn create_role(&self, name: &str) -> String {
        let body = format!(
            "Action=CreateRole&Version=2010-05-08&RoleName={name}&AssumeRolePolicyDocument=%7B%7D"
        );
        // moto routes on the credential scope's service.
        let auth = "Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0\r\n";
        let (status, text) = http(
            self.port,
            "POST",
            "/",
            "application/x-www-form-urlencoded",
            auth,
            &body,
        )
        .expect("CreateRole request");
        assert_eq!(status, 200, "CreateRole: {text}");
        format!("arn:aws:iam::123456789012:role/{name}")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of `/metrics` on `port`: the value of the line starting with
/// `series `.
pub(crate) fn metric(port: u16, series: &str) -> Option<f64> {
    let (_, text) = http(port, "GET", "/metrics", "text/plain", "", "").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `fanout run` as a child process, its output in a log file; killed on
/// drop.
pub(crate) struct Fanout {
    /// Open so a test can SIGKILL and reap it itself.
    pub(crate) child: Child,
    /// Open so a check can read the log while `wait_for` holds `self`.
    pub(crate) log: PathBuf,
}

impl Fanout {
    /// Start `fanout run --config <config>` with the emulator's
    /// credentials, logging at info to `log`.
    pub(crate) fn run(config: &Path, log: PathBuf) -> Fanout {
        Fanout::spawn(
            &["run", "--config", config.to_str().unwrap()],
            // The samples the estimator was fed: what a failed learning
            // test needs to be diagnosed from its log alone.
            &[("RUST_LOG", "info,fanout::controller::observe=debug")],
            log,
        )
    }

    /// Start `fanout <args>` with the emulator's credentials and `envs`
    /// (its own `RUST_LOG`, a config in the environment), output to `log`.
    pub(crate) fn spawn(args: &[&str], envs: &[(&str, &str)], log: PathBuf) -> Fanout {
        let file = std::fs::File::create(&log).unwrap();
        let err = file.try_clone().unwrap();
        let child = child_env(&mut Command::new(BIN))
            .args(args)
            .envs(envs.iter().copied())
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("cannot start fanout run");
        Fanout { child, log }
    }

    /// Everything logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send `sig` (e.g. "-TERM") with kill(1).
    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Wait for the exit; returns its code.
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        self.wait_exit_timed(limit).await.0
    }

    /// Wait for the exit; returns its code and how long it took, for a
    /// test that bounds the shutdown.
    pub(crate) async fn wait_exit_timed(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), t0.elapsed());
            }
            assert!(
                t0.elapsed() < limit,
                "fanout did not exit within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fail with the log if the process has exited.
    pub(crate) fn assert_running(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("fanout run exited early ({st}):\n{}", self.log());
        }
    }

    /// Poll `done` every 200 ms while the process keeps running; fail after
    /// `limit` with `what` and the log.
    pub(crate) async fn wait_for(
        &mut self,
        limit: Duration,
        what: impl Fn() -> String,
        mut done: impl FnMut() -> bool,
    ) {
        self.wait_for_async(limit, Duration::from_millis(200), what, async || done())
            .await;
    }

    /// `wait_for` polling every `every`, for a check that awaits (an SDK
    /// call).
    pub(crate) async fn wait_for_async(
        &mut self,
        limit: Duration,
        every: Duration,
        what: impl Fn() -> String,
        mut done: impl AsyncFnMut() -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            self.assert_running();
            if done().await {
                return;
            }
            assert!(Instant::now() < deadline, "{}:\n{}", what(), self.log());
            tokio::time::sleep(every).await;
        }
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
