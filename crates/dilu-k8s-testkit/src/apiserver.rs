//! A real etcd + kube-apiserver on loopback ports, in a temporary directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{Proc, free_port, random_hex, tail};

/// The administrator: member of `system:masters`, allowed everything.
pub const ADMIN: &str = "admin";
/// The user the real kube-scheduler runs as (the API server's bootstrap RBAC binds it).
pub const KUBE_SCHEDULER_USER: &str = "system:kube-scheduler";
/// Users every test API server knows, each with its own token and no group (so RBAC decides what they may
/// do): Dilu's components, and `nobody` for "forbidden" checks.
pub const USERS: &[&str] = &[
    "dilu-controller",
    "dilu-scheduler",
    "dilu-gateway",
    "dilu-agent",
    "dilu-node",
    "nobody",
];
/// kubectl (1.32, from the distribution).
pub const KUBECTL: &str = "/usr/bin/kubectl";
/// The command that builds the Kubernetes binaries the kit needs.
pub const BUILD_COMMAND: &str = "bash scripts/build-kube.sh";

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 3;

/// Where the Kubernetes binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `kube-apiserver` 1.20.
    pub kube_apiserver: PathBuf,
    /// `kube-scheduler` 1.20.
    pub kube_scheduler: PathBuf,
    /// `etcd` (3.4, Debian's etcd-server).
    pub etcd: PathBuf,
    /// `openssl` (makes the service-account signing key).
    pub openssl: PathBuf,
}

impl Binaries {
    /// The cache `scripts/build-kube.sh` fills: `$DILU_KUBE_CACHE`, else `~/.cache/dilu/kube-1.20`.
    pub fn cache_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("DILU_KUBE_CACHE").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache/dilu/kube-1.20")
    }

    /// Finds the binaries, or says what is missing.
    pub fn find() -> Result<Binaries, String> {
        let bin = Binaries::cache_dir().join("bin");
        let binaries = Binaries {
            kube_apiserver: bin.join("kube-apiserver"),
            kube_scheduler: bin.join("kube-scheduler"),
            etcd: which("etcd").unwrap_or_else(|| PathBuf::from("/usr/bin/etcd")),
            openssl: which("openssl").unwrap_or_else(|| PathBuf::from("/usr/bin/openssl")),
        };
        let missing: Vec<String> = [
            &binaries.kube_apiserver,
            &binaries.kube_scheduler,
            &binaries.etcd,
            &binaries.openssl,
        ]
        .into_iter()
        .filter(|p| !is_executable(p))
        .map(|p| p.display().to_string())
        .collect();
        if missing.is_empty() {
            Ok(binaries)
        } else {
            Err(format!(
                "{} not found (build them: {BUILD_COMMAND}; etcd comes from Debian's etcd-server, openssl from openssl)",
                missing.join(", ")
            ))
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    })
}

/// Reports a test that cannot run here: prints `SKIPPED: …` and returns, or panics under CI (`CI=true`),
/// where a skipped test would hide a broken setup.
pub fn skip(reason: &str) {
    let message = format!("SKIPPED: {reason}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: a test that needs a real API server must run in CI)");
    }
    eprintln!("{message}");
}

/// A real etcd and kube-apiserver 1.20 on free loopback ports, each test its own.
///
/// - HTTPS with the API server's self-signed certificate ([`ApiServer::ca_file`]); clients trust it.
/// - Token authentication: [`ADMIN`] (in `system:masters`), [`KUBE_SCHEDULER_USER`], and [`USERS`] (plus the
///   extra users of [`ApiServer::start_with_users`]), each with its own token and no group.
/// - RBAC authorization; the `ServiceAccount` admission plugin is off (no token controller runs), and so is
///   `TaintNodesByCondition` (no node-lifecycle controller would ever lift its `not-ready` taint).
/// - No controller-manager: nothing garbage-collects, no Deployment makes pods; no kubelet: see
///   [`crate::NodeRunner`].
///
/// Dropping it kills both processes (their process groups) and removes its directories. Set
/// `DILU_KUBE_KEEP=1` to keep the directory (logs, kubeconfigs) for a post-mortem; its path is printed.
pub struct ApiServer {
    url: String,
    dir: Option<TempDir>,
    etcd_dir: Option<TempDir>,
    ca_file: PathBuf,
    tokens: BTreeMap<String, String>,
    kubeconfigs: BTreeMap<String, PathBuf>,
    apiserver: Proc,
    etcd: Proc,
    started_in: Duration,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.url)
            .field("dir", &self.dir())
            .field("started_in", &self.started_in)
            .finish()
    }
}

enum Attempt {
    Up(Box<ApiServer>),
    /// A port was taken between choosing it and binding it: try other ports.
    PortTaken,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers `ok`; `None` (after printing
    /// `SKIPPED: …`) when the binaries are missing, outside CI. Panics, with the logs' tails, when they do not
    /// come up within 60 s.
    pub async fn start() -> Option<ApiServer> {
        ApiServer::start_with_users(&[]).await
    }

    /// [`ApiServer::start`] with more users than [`USERS`] (each gets a token and a kubeconfig; no group).
    pub async fn start_with_users(extra_users: &[&str]) -> Option<ApiServer> {
        let binaries = match Binaries::find() {
            Ok(b) => b,
            Err(missing) => {
                skip(&missing);
                return None;
            }
        };
        let mut users: Vec<String> = vec![ADMIN.into(), KUBE_SCHEDULER_USER.into()];
        users.extend(USERS.iter().map(|u| u.to_string()));
        for user in extra_users {
            assert!(
                !user.is_empty() && !user.contains([',', '"', '\n', '/']),
                "dilu-k8s-testkit: user name {user:?} cannot go in a token file"
            );
            if !users.iter().any(|u| u == user) {
                users.push(user.to_string());
            }
        }
        remove_stale_etcd_dirs();
        for attempt in 1..=START_ATTEMPTS {
            match ApiServer::try_start(&binaries, &users).await {
                Attempt::Up(server) => return Some(*server),
                Attempt::PortTaken => {
                    eprintln!(
                        "dilu-k8s-testkit: a port was taken while starting (attempt {attempt}/{START_ATTEMPTS}); retrying"
                    );
                }
            }
        }
        panic!(
            "dilu-k8s-testkit: could not start etcd and kube-apiserver: ports kept being taken ({START_ATTEMPTS} attempts)"
        );
    }

    async fn try_start(binaries: &Binaries, users: &[String]) -> Attempt {
        let t0 = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("dilu-kube-")
            .tempdir()
            .expect("dilu-k8s-testkit: creating a temporary directory");
        // etcd fsyncs every write: on tmpfs that costs nothing, which keeps a loaded machine's API server fast.
        let shm = Path::new("/dev/shm");
        let etcd_dir = tempfile::Builder::new()
            .prefix(&format!("{ETCD_DIR_PREFIX}{}-", std::process::id()))
            .tempdir_in(if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            })
            .or_else(|_| {
                tempfile::Builder::new()
                    .prefix(&format!("{ETCD_DIR_PREFIX}{}-", std::process::id()))
                    .tempdir()
            })
            .expect("dilu-k8s-testkit: creating etcd's data directory");
        let d = dir.path();

        // The service-account signing key (P-256: instant to make).
        let key = d.join("sa.key");
        let out = Command::new(&binaries.openssl)
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(&key)
            .output()
            .expect("dilu-k8s-testkit: running openssl");
        assert!(
            out.status.success(),
            "dilu-k8s-testkit: openssl ecparam failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Tokens: `token,user,uid[,"groups"]`.
        let mut tokens = BTreeMap::new();
        let mut csv = String::new();
        for (i, user) in users.iter().enumerate() {
            let token = random_hex();
            let groups = if user == ADMIN {
                ",\"system:masters\""
            } else {
                ""
            };
            csv.push_str(&format!("{token},{user},uid-{i}{groups}\n"));
            tokens.insert(user.clone(), token);
        }
        let token_file = d.join("tokens.csv");
        fs::write(&token_file, csv).expect("dilu-k8s-testkit: writing the token file");
        for (user, token) in &tokens {
            fs::write(d.join(format!("token-{}", file_safe(user))), token)
                .expect("dilu-k8s-testkit: writing a token");
        }

        let (client_port, peer_port, secure_port) = (
            free_port().expect("dilu-k8s-testkit: choosing a port"),
            free_port().expect("dilu-k8s-testkit: choosing a port"),
            free_port().expect("dilu-k8s-testkit: choosing a port"),
        );
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_log = d.join("etcd.log");
        let mut etcd_cmd = Command::new(&binaries.etcd);
        etcd_cmd
            .arg("--name=default")
            .arg(format!(
                "--data-dir={}",
                etcd_dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        let etcd = spawn_logged(etcd_cmd, &etcd_log, "etcd");

        let cert_dir = d.join("certs");
        let api_log = d.join("kube-apiserver.log");
        let mut api_cmd = Command::new(&binaries.kube_apiserver);
        api_cmd
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--secure-port={secure_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--cert-dir={}", cert_dir.display()))
            .arg(format!("--token-auth-file={}", token_file.display()))
            .arg(format!("--service-account-key-file={}", key.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                key.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount,TaintNodesByCondition")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--allow-privileged=true")
            // No other API server shares this etcd; without this it logs an error a second about its lease.
            .arg("--endpoint-reconciler-type=none")
            // Less to bootstrap at start (flow schemas) and no request queuing in tests.
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false");
        let apiserver = spawn_logged(api_cmd, &api_log, "kube-apiserver");

        let mut server = ApiServer {
            url: format!("https://127.0.0.1:{secure_port}"),
            ca_file: cert_dir.join("apiserver.crt"),
            dir: Some(dir),
            etcd_dir: Some(etcd_dir),
            tokens,
            kubeconfigs: BTreeMap::new(),
            apiserver,
            etcd,
            started_in: Duration::ZERO,
        };
        for user in users {
            let path = server.write_kubeconfig(user);
            server.kubeconfigs.insert(user.clone(), path);
        }

        // Wait for `/readyz`.
        let deadline = t0 + READY_TIMEOUT;
        let mut client: Option<kube::Client> = None;
        let mut last_answer = String::from("(no answer yet)");
        loop {
            for (proc, log) in [(&server.etcd, &etcd_log), (&server.apiserver, &api_log)] {
                if let Some(status) = proc.exit_status() {
                    let text = fs::read_to_string(log).unwrap_or_default();
                    if text.contains("address already in use") {
                        return Attempt::PortTaken;
                    }
                    panic!(
                        "dilu-k8s-testkit: {} exited ({status}) while starting.\n{}",
                        log.display(),
                        server.log_tails()
                    );
                }
            }
            if client.is_none() && server.ca_file.exists() {
                // The certificate file appears before the server serves; a half-written file fails the
                // client's construction, which is retried.
                client = kube::Client::try_from(server.config_as(ADMIN)).ok();
            }
            if let Some(c) = &client {
                match readyz(c).await {
                    Ok(text) if text.trim() == "ok" => break,
                    Ok(text) => last_answer = text,
                    Err(e) => last_answer = e,
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "dilu-k8s-testkit: kube-apiserver at {} not ready within {READY_TIMEOUT:?} (last /readyz: {last_answer}).\n{}",
                    server.url,
                    server.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // An etcd that lost its port to another may have died after the API server connected to the winner.
        if server.etcd.exit_status().is_some() {
            return Attempt::PortTaken;
        }
        server.started_in = t0.elapsed();
        if std::env::var_os("DILU_KUBE_KEEP").is_some_and(|v| v == "1") {
            eprintln!(
                "dilu-k8s-testkit: API server {} in {} (kept: DILU_KUBE_KEEP=1)",
                server.url,
                server.dir().display()
            );
        }
        Attempt::Up(Box::new(server))
    }

    fn write_kubeconfig(&self, user: &str) -> PathBuf {
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "dilu-test", "cluster": {
                "server": self.url,
                "certificate-authority": self.ca_file,
            }}],
            "users": [{"name": user, "user": {"token": self.tokens[user]}}],
            "contexts": [{"name": "dilu-test", "context": {
                "cluster": "dilu-test", "user": user, "namespace": "default",
            }}],
            "current-context": "dilu-test",
        });
        let path = self
            .dir()
            .join(format!("kubeconfig-{}.json", file_safe(user)));
        fs::write(&path, config.to_string()).expect("dilu-k8s-testkit: writing a kubeconfig");
        path
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long starting took (until `/readyz` said `ok`).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The temporary directory: logs (`etcd.log`, `kube-apiserver.log`), kubeconfigs, tokens, certificates.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/"), TempDir::path)
    }

    /// The API server's self-signed certificate and its CA (PEM), which clients trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The users with a token.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.tokens.keys().map(String::as_str)
    }

    /// `user`'s bearer token. Panics for a user the server was not started with.
    pub fn token(&self, user: &str) -> &str {
        match self.tokens.get(user) {
            Some(t) => t,
            None => panic!(
                "dilu-k8s-testkit: no user {user:?} (known: {:?}; add one with ApiServer::start_with_users)",
                self.tokens.keys().collect::<Vec<_>>()
            ),
        }
    }

    /// A kubeconfig for `user` (for kubectl, and for child processes through `KUBECONFIG`).
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.token(user);
        self.kubeconfigs[user].clone()
    }

    /// A client configuration for `user` (trusts the server's certificate, authenticates with the token).
    pub fn config_as(&self, user: &str) -> kube::Config {
        self.token(user);
        let uri: http::Uri = self
            .url
            .parse()
            .expect("dilu-k8s-testkit: the server URL parses");
        let mut config = kube::Config::new(uri);
        config.root_cert_file = Some(self.ca_file.clone());
        config.auth_info.token_file = Some(
            self.dir()
                .join(format!("token-{}", file_safe(user)))
                .display()
                .to_string(),
        );
        config.connect_timeout = Some(Duration::from_secs(5));
        config
    }

    /// A client acting as [`ADMIN`]. Call it inside the tokio runtime that will use the client.
    pub fn client(&self) -> kube::Client {
        self.client_as(ADMIN)
    }

    /// A client acting as `user`. Call it inside the tokio runtime that will use the client.
    pub fn client_as(&self, user: &str) -> kube::Client {
        kube::Client::try_from(self.config_as(user))
            .expect("dilu-k8s-testkit: building a client for the test API server")
    }

    /// Runs kubectl as [`ADMIN`] and waits for it. Blocks the thread: in a current-thread runtime nothing
    /// else (a [`crate::NodeRunner`]) progresses meanwhile, so use [`ApiServer::kubectl_async`] for commands
    /// that wait on other tasks (`kubectl wait`).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(ADMIN, args)
    }

    /// Runs kubectl as `user` (blocking; see [`ApiServer::kubectl`]).
    pub fn kubectl_as(&self, user: &str, args: &[&str]) -> Output {
        self.kubectl_command(user, args)
            .output()
            .unwrap_or_else(|e| panic!("dilu-k8s-testkit: running {KUBECTL}: {e}"))
    }

    /// Runs kubectl as [`ADMIN`] on a blocking thread.
    pub async fn kubectl_async(&self, args: &[&str]) -> Output {
        let mut command = self.kubectl_command(ADMIN, args);
        tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("dilu-k8s-testkit: the kubectl thread panicked")
            .unwrap_or_else(|e| panic!("dilu-k8s-testkit: running {KUBECTL}: {e}"))
    }

    /// The kubectl command for `user` with `args`, to run as wanted.
    pub fn kubectl_command(&self, user: &str, args: &[&str]) -> Command {
        let mut command = Command::new(KUBECTL);
        // Its own discovery cache: another test's server may have had this port with other resources.
        command
            .env("KUBECONFIG", self.kubeconfig(user))
            .arg(format!(
                "--cache-dir={}",
                self.dir().join("kubectl-cache").display()
            ))
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// The last lines of etcd's and kube-apiserver's logs.
    pub fn log_tails(&self) -> String {
        format!(
            "--- etcd.log (tail) ---\n{}\n--- kube-apiserver.log (tail) ---\n{}",
            tail(&self.dir().join("etcd.log"), 15),
            tail(&self.dir().join("kube-apiserver.log"), 40)
        )
    }

    /// The API server's process id (its process group's too).
    pub fn pid(&self) -> u32 {
        self.apiserver.pid()
    }

    /// etcd's process id.
    pub fn etcd_pid(&self) -> u32 {
        self.etcd.pid()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.apiserver.kill();
        self.etcd.kill();
        if std::env::var_os("DILU_KUBE_KEEP").is_some_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "dilu-k8s-testkit: kept {} (DILU_KUBE_KEEP=1)",
                kept.display()
            );
        }
        // The TempDirs remove themselves.
        self.etcd_dir.take();
    }
}

const ETCD_DIR_PREFIX: &str = "dilu-kube-etcd-";

/// etcd data directories on tmpfs left by test processes that were killed before their drop ran.
fn remove_stale_etcd_dirs() {
    for base in [Path::new("/dev/shm").to_path_buf(), std::env::temp_dir()] {
        let Ok(entries) = fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(ETCD_DIR_PREFIX)) else {
                continue;
            };
            let Some(pid) = rest
                .split('-')
                .next()
                .and_then(|p| p.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            // SAFETY: kill with signal 0 only checks that the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            if !alive {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn spawn_logged(mut command: Command, log: &Path, what: &str) -> Proc {
    let file = fs::File::create(log).expect("dilu-k8s-testkit: creating a log file");
    let err = file
        .try_clone()
        .expect("dilu-k8s-testkit: duplicating a log file handle");
    command.stdin(Stdio::null()).stdout(file).stderr(err);
    Proc::spawn(command).unwrap_or_else(|e| panic!("dilu-k8s-testkit: starting {what}: {e}"))
}

async fn readyz(client: &kube::Client) -> Result<String, String> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    client
        .request_text(request)
        .await
        .map_err(|e| e.to_string())
}

/// A user name as part of a file name.
pub(crate) fn file_safe(user: &str) -> String {
    user.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
