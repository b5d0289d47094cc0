//! The harness of the tests against a real kube-apiserver (`kubernetes`, `kubernetes_nodes`): Dilu's processes
//! (controller, scheduler, gateway, node agents) as children, the API server prepared with the CRD and the RBAC
//! of `deploy/` bound to the test users, waiting helpers and an open-loop load. Included with
//! `#[path = "common/kube.rs"] mod harness;` by the tests that use it (next to `mod common;`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dilu_k8s::Function;
use dilu_k8s::meta;
use dilu_k8s_testkit::{ApiServer, NodeRunner, fake_devices, fake_node};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

use crate::common;

/// A child process killed (with its process group) on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, dir: &Path, kubeconfig: &Path, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(common::dilu_bin())
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            log,
        }
    }

    /// Everything it has written (stdout and stderr).
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 40 lines of its output, headed by its name.
    pub fn log(&self) -> String {
        let text = self.text();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        format!(
            "--- {} ---\n{}",
            self.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits for the line of `proc`'s log that holds `marker` and returns what follows it.
fn announced(proc: &Proc, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = proc.text();
        if let Some(rest) = text
            .lines()
            .find_map(|l| l.split(marker).nth(1))
            .map(|u| u.trim().to_string())
        {
            return rest;
        }
        assert!(
            Instant::now() < deadline,
            "no {marker:?} line\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the gateway's "listening on" line in its log.
pub fn gateway_url(gateway: &Proc) -> String {
    announced(gateway, "listening on ")
}

/// The `/metrics` URL a controller or scheduler announced.
pub fn metrics_url(proc: &Proc) -> String {
    announced(proc, "metrics on ")
}

/// The value of `series` (name and labels exactly as exposed) in the Prometheus text at `url`; `None` when absent.
pub async fn metric(url: &str, series: &str) -> Option<f64> {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .ok()?
        .get(url)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    dilu_core::prometheus::value(&text, series)
}

/// The processes of a serving cluster ([`ControlPlane::serving`]).
pub struct Serving {
    pub gateway: Proc,
    /// The gateway's base URL.
    pub url: String,
    pub scheduler: Proc,
    pub controller: Proc,
}

impl Serving {
    /// The tails of the three logs, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.controller.log(),
            self.scheduler.log(),
            self.gateway.log()
        )
    }
}

/// The API server with the CRD, `dilu-system` and the RBAC of `deploy/` bound to the test users Dilu's processes
/// run as, and a directory for their logs.
pub struct ControlPlane {
    pub api: ApiServer,
    pub dir: tempfile::TempDir,
}

impl ControlPlane {
    /// `None` (after `SKIPPED: …`) when the API server's binaries are missing.
    pub async fn start() -> Option<ControlPlane> {
        let api = ApiServer::start().await?;
        let plane = ControlPlane {
            api,
            dir: tempfile::tempdir().unwrap(),
        };
        plane.kubectl(&["apply", "-f", &repo("deploy/crd.yaml")]);
        plane.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/functions.dilu.io",
            "--timeout=60s",
        ]);
        // The namespace and the least-privilege RBAC of deploy/, bound to the test users Dilu's processes run as
        // (in a cluster they are bound to the processes' service accounts).
        for file in ["deploy/namespace.yaml", "deploy/rbac.yaml"] {
            plane.kubectl(&["apply", "-f", &repo(file)]);
        }
        for user in ["dilu-controller", "dilu-scheduler", "dilu-gateway"] {
            plane.kubectl(&[
                "create",
                "clusterrolebinding",
                &format!("{user}-user"),
                &format!("--clusterrole={user}"),
                &format!("--user={user}"),
            ]);
        }
        plane.kubectl(&[
            "create",
            "rolebinding",
            "dilu-leader-election-users",
            "-n",
            "dilu-system",
            "--role=dilu-leader-election",
            "--user=dilu-controller",
            "--user=dilu-scheduler",
        ]);
        plane.kubectl(&[
            "create",
            "rolebinding",
            "dilu-node-leases-reader-users",
            "-n",
            "dilu-system",
            "--role=dilu-node-leases-reader",
            "--user=dilu-controller",
            "--user=dilu-scheduler",
            "--user=dilu-gateway",
        ]);
        Some(plane)
    }

    /// The node agent's RBAC (`deploy/agent.yaml`: its DaemonSet stays inert, no controller manager runs here)
    /// bound to the test user `dilu-agent`.
    pub fn bind_agent(&self) {
        self.kubectl(&["apply", "-f", &repo("deploy/agent.yaml")]);
        self.kubectl(&[
            "create",
            "clusterrolebinding",
            "dilu-agent-user",
            "--clusterrole=dilu-agent",
            "--user=dilu-agent",
        ]);
        self.kubectl(&[
            "create",
            "rolebinding",
            "dilu-agent-user",
            "-n",
            "dilu-system",
            "--role=dilu-agent",
            "--user=dilu-agent",
        ]);
    }

    /// The kubeconfig of a Dilu process's user, with only the RBAC of deploy/.
    pub fn user(&self, user: &str) -> PathBuf {
        self.api.kubeconfig(user)
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.api.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn scheduler(&self, identity: &str) -> Proc {
        Proc::spawn(
            &format!("scheduler-{identity}"),
            self.dir.path(),
            &self.user("dilu-scheduler"),
            &[
                "kube",
                "scheduler",
                "--identity",
                identity,
                "--lease-seconds",
                "6",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
        )
    }

    pub fn controller(&self, identity: &str, gateway: Option<&str>) -> Proc {
        let mut args = vec![
            "kube",
            "controller",
            "--identity",
            identity,
            "--lease-seconds",
            "6",
            "--image",
            "dilu:test",
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        if let Some(g) = gateway {
            args.extend(["--gateway", g]);
        }
        Proc::spawn(
            &format!("controller-{identity}"),
            self.dir.path(),
            &self.user("dilu-controller"),
            &args,
        )
    }

    /// A gateway, scheduler `s1` and controller `c1` (following that gateway), as a serving cluster runs them.
    pub fn serving(&self) -> Serving {
        let (gateway, url) = self.gateway();
        let scheduler = self.scheduler("s1");
        let controller = self.controller("c1", Some(&url));
        Serving {
            gateway,
            url,
            scheduler,
            controller,
        }
    }

    pub fn gateway(&self) -> (Proc, String) {
        let g = Proc::spawn(
            "gateway",
            self.dir.path(),
            &self.user("dilu-gateway"),
            &[
                "gateway",
                "--kubernetes",
                "--namespace",
                "default",
                "--listen",
                "127.0.0.1:0",
            ],
        );
        let url = gateway_url(&g);
        (g, url)
    }

    /// The pods of function `function`.
    pub async fn pods(&self, function: &str) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.api.client(), "default");
        pods.list(&ListParams::default().labels(&format!("{}={function}", meta::FUNCTION)))
            .await
            .unwrap()
            .items
    }

    pub async fn function(&self, name: &str) -> Option<Function> {
        let functions: Api<Function> = Api::namespaced(self.api.client(), "default");
        functions.get_opt(name).await.unwrap()
    }

    /// Function `name` once its status says running with a ready pod.
    pub async fn running(&self, name: &str) -> Option<Function> {
        let f = self.function(name).await?;
        let s = f.status.as_ref()?;
        (s.phase.as_deref() == Some("running") && s.ready_instances >= 1).then_some(f)
    }
}

/// A control plane with CPU nodes (`cpu-node-<i>`, inventories written by the test) and one node runner for all.
pub struct Cluster {
    pub plane: ControlPlane,
    pub runner: NodeRunner,
    pub nodes: Vec<String>,
}

impl Deref for Cluster {
    type Target = ControlPlane;

    fn deref(&self) -> &ControlPlane {
        &self.plane
    }
}

impl Cluster {
    pub async fn start(nodes: usize) -> Option<Cluster> {
        let plane = ControlPlane::start().await?;
        let client = plane.api.client();
        let mut names = Vec::new();
        for i in 0..nodes {
            let name = format!("cpu-node-{i}");
            fake_node(&client, &name, &fake_devices(&name, 0), 0)
                .await
                .unwrap();
            names.push(name);
        }
        let runner = NodeRunner::start(
            client,
            "default",
            names.clone(),
            PathBuf::from(common::dilu_bin()),
        )
        .await;
        Some(Cluster {
            plane,
            runner,
            nodes: names,
        })
    }
}

/// A path in the repository.
pub fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .display()
        .to_string()
}

/// Polls `f` every 200 ms until it gives a value; panics with `logs()` after `timeout`.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    logs: impl Fn() -> String,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a pod is Ready and not being deleted.
pub fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

pub fn ready_pods(pods: &[Pod]) -> usize {
    pods.iter().filter(|p| is_ready(p)).count()
}

/// An open-loop load: `rate` requests per second until stopped; counts answers by status (0: no answer).
pub struct Load {
    stop: Arc<AtomicBool>,
    statuses: Arc<Mutex<BTreeMap<u16, u64>>>,
    /// (when sent, status) of every answered request.
    answers: Arc<Mutex<Vec<(Instant, u16)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(url: String, body: Vec<u8>, rate: f64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(BTreeMap::new()));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (s, counts, log) = (stop.clone(), statuses.clone(), answers.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let start = Instant::now();
            let mut sent = 0u64;
            while !s.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                sent += 1;
                let (client, url, body, counts, log) = (
                    client.clone(),
                    url.clone(),
                    body.clone(),
                    counts.clone(),
                    log.clone(),
                );
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let status = match client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                    {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    *counts.lock().unwrap().entry(status).or_insert(0) += 1;
                    log.lock().unwrap().push((sent, status));
                });
            }
        });
        Load {
            stop,
            statuses,
            answers,
            task,
        }
    }

    /// The answers so far, by status.
    pub fn so_far(&self) -> BTreeMap<u16, u64> {
        self.statuses.lock().unwrap().clone()
    }

    /// Stops sending, waits for the answers, and returns the count per status.
    pub async fn finish(self) -> BTreeMap<u16, u64> {
        self.finish_answers().await.0
    }

    /// [`Load::finish`], with every answer's status and when its request was sent.
    pub async fn finish_answers(self) -> (BTreeMap<u16, u64>, Vec<(Instant, u16)>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let statuses = self.statuses.lock().unwrap().clone();
        let mut answers = self.answers.lock().unwrap().clone();
        answers.sort();
        (statuses, answers)
    }
}
