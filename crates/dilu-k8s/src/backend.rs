//! The controller's [`InstanceBackend`] on Kubernetes: an instance is a Pod in the functions' namespace.
//!
//! - `create` makes a Pod owned by its `Function` (owner reference), labelled with the function, template,
//!   generation and instance name, annotated with its booking and quota, asking for `dilu-scheduler`; its
//!   container runs the `dilu` image with the plan's arguments (a process function: its own image and
//!   command, with `HOST=$(POD_IP)` and `PORT=8080`), listening on `$(POD_IP):8080`, with the
//!   runtime's readiness probe, its pod UID in `DILU_POD_UID` and its quota channel in `DILU_QUOTA_FILE`
//!   (`/run/dilu/quota/$(DILU_POD_UID)`, where the node agent's device plugin mounts the device's channels),
//!   and one share of its device kind as resource request and limit ([`share_resource`]), which makes the
//!   kubelet ask the agent's device plugin for it;
//! - `list` reads the pods back: phase from their status, place from dilu-scheduler's assignment (or the plan
//!   until bound), endpoint from the pod IP;
//! - `nodes` reads the inventory the node agents publish on their Node objects.
//!
//! Every call is one API request; the controller runs a pass a second and at once on watch events.

use std::collections::BTreeMap;

use dilu_api::agent::InstancePhase;
use dilu_api::{FieldError, InstanceKind, Quota, Runtime};
use dilu_control::backend::{
    BackendError, BoxFuture, InstanceBackend, InstancePlan, Launch, NodeInfo, ObservedInstance,
};
use dilu_core::ledger::{DeviceClass, DeviceRef};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Node, ObjectFieldSelector, Pod,
    PodSpec, Probe, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::crd::{Function, KIND};
use crate::meta::{self, Assignment, PodBooking};

/// The port every instance container serves on (its pod has its own IP).
pub const INSTANCE_PORT: u16 = 8080;

/// The extended resource an instance of a device class asks one of: [`meta::GPU_SHARE`] or
/// [`meta::CPU_SHARE`].
pub fn share_resource(class: DeviceClass) -> &'static str {
    match class {
        DeviceClass::Gpu => meta::GPU_SHARE,
        DeviceClass::Cpu => meta::CPU_SHARE,
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// How the backend makes pods.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    /// The namespace of the functions and their pods.
    pub namespace: String,
    /// The image whose entrypoint is the `dilu` binary.
    pub image: String,
    /// `imagePullPolicy`.
    pub pull_policy: String,
    /// Seconds a pod has to finish its requests when deleted.
    pub termination_grace_s: i64,
}

impl PodTemplate {
    /// Pods of `namespace` running `image`.
    pub fn new(namespace: &str, image: &str) -> PodTemplate {
        PodTemplate {
            namespace: namespace.to_string(),
            image: image.to_string(),
            pull_policy: "IfNotPresent".into(),
            termination_grace_s: 30,
        }
    }

    /// The pod of `plan`, owned by the function object `owner_uid`; it asks one `share` ([`share_resource`]).
    pub fn pod(&self, plan: &InstancePlan, owner_uid: &str) -> Pod {
        let class = plan.device_class;
        let share = share_resource(class);
        let labels = BTreeMap::from([
            (meta::FUNCTION.to_string(), plan.function.clone()),
            (meta::TEMPLATE.to_string(), plan.template.clone()),
            (meta::GENERATION.to_string(), plan.generation.to_string()),
            (meta::INSTANCE.to_string(), plan.name.clone()),
            (meta::KIND.to_string(), plan.kind.as_str().to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "dilu".to_string(),
            ),
        ]);
        // Plain data: serialising cannot fail.
        let mut annotations = BTreeMap::from([
            (
                meta::BOOKING.to_string(),
                serde_json::to_string(&PodBooking::of(&plan.booking, class)).unwrap_or_default(),
            ),
            (
                meta::QUOTA.to_string(),
                serde_json::to_string(&plan.quota).unwrap_or_default(),
            ),
            (
                meta::PLANNED.to_string(),
                Assignment::of(&plan.at).annotation(),
            ),
            (meta::PORT.to_string(), INSTANCE_PORT.to_string()),
        ]);
        if let Some(spread) = &plan.scheduling.spread {
            annotations.insert(
                meta::SPREAD.to_string(),
                serde_json::to_string(spread).unwrap_or_default(),
            );
        }
        let mut env = vec![
            field_env("POD_IP", "status.podIP"),
            field_env(meta::POD_UID_ENV, "metadata.uid"),
        ];
        // The built-in runtimes are the image's `dilu`; a process is its own command in its own image (check()
        // refuses a process without one). `$(POD_IP)` in its HOST and arguments is the kubelet's to expand.
        let image = match &plan.runtime {
            Runtime::Process { process } => process.image.clone(),
            _ => None,
        }
        .unwrap_or_else(|| self.image.clone());
        let (command, args, working_dir) = match plan.launch("$(POD_IP)", INSTANCE_PORT) {
            Launch::Dilu(args) => (vec!["dilu".to_string()], Some(args), None),
            Launch::Program {
                command,
                env: vars,
                workdir,
            } => {
                env.extend(vars.into_iter().map(|(name, value)| EnvVar {
                    name,
                    value: Some(value),
                    ..EnvVar::default()
                }));
                (command, None, workdir.map(|d| d.display().to_string()))
            }
        };
        let container = Container {
            name: "instance".into(),
            image: Some(image),
            image_pull_policy: Some(self.pull_policy.clone()),
            command: Some(command),
            args,
            working_dir,
            // The instance's quota channel is `$DILU_QUOTA_DIR/$DILU_POD_UID`: the device plugin's `Allocate` sets
            // the directory (where it mounts the device's channels), this the UID, and the interposer and the
            // workers join them (`dilu_quota::channel_from_env`). A pod variable cannot name the plugin's: the
            // kubelet expands `$(VAR)` in env values from the pod's own variables only. On a node without Dilu's
            // plugin there is no directory, so no channel to miss: the instance runs unthrottled.
            env: Some(env),
            // Extended resources: request and limit must be equal.
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([(share.to_string(), Quantity("1".into()))])),
                limits: Some(BTreeMap::from([(share.to_string(), Quantity("1".into()))])),
                ..ResourceRequirements::default()
            }),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: i32::from(INSTANCE_PORT),
                ..ContainerPort::default()
            }]),
            readiness_probe: Some(Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(plan.health_path()),
                    port: IntOrString::Int(i32::from(INSTANCE_PORT)),
                    ..HTTPGetAction::default()
                }),
                period_seconds: Some(1),
                ..Probe::default()
            }),
            ..Container::default()
        };
        let mut spec = PodSpec {
            scheduler_name: Some(meta::SCHEDULER_NAME.into()),
            restart_policy: Some("Always".into()),
            termination_grace_period_seconds: Some(self.termination_grace_s),
            containers: vec![container],
            ..PodSpec::default()
        };
        crate::scheduling::write_pod_spec(&plan.scheduling, &mut spec);
        Pod {
            metadata: ObjectMeta {
                name: Some(plan.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: Some(vec![OwnerReference {
                    api_version: format!("{}/{}", meta::GROUP, meta::VERSION),
                    kind: KIND.into(),
                    name: plan.function.clone(),
                    uid: owner_uid.to_string(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        }
    }
}

/// Instances as Pods through the API server.
pub struct KubeBackend {
    client: Client,
    template: PodTemplate,
    /// The usable share of each device (by UUID), from the last read of the nodes.
    usable: std::sync::Mutex<BTreeMap<String, f64>>,
}

fn api_error(context: &str, e: kube::Error) -> BackendError {
    match &e {
        kube::Error::Api(status) if status.code == 404 => BackendError::NotFound(context.into()),
        kube::Error::Api(status) if status.code == 409 => {
            BackendError::Conflict(FieldError::new("name", context, status.message.clone()))
        }
        kube::Error::Api(_) => BackendError::Failed {
            context: context.into(),
            reason: e.to_string(),
        },
        _ => BackendError::Unavailable(format!("{context}: {e}")),
    }
}

impl KubeBackend {
    /// A backend making pods with `template` through `client`.
    pub fn new(client: Client, template: PodTemplate) -> KubeBackend {
        KubeBackend {
            client,
            template,
            usable: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.template.namespace)
    }

    /// Reads the nodes once: their inventories, and (kept for `list`) each device's usable share.
    async fn read_nodes(&self) -> Result<Vec<NodeInfo>, BackendError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("listing nodes", e))?;
        let mut inventories = Vec::new();
        let mut shares = BTreeMap::new();
        for n in list {
            let name = n.metadata.name.clone().unwrap_or_default();
            let Some(text) = annotation(&n.metadata, meta::INVENTORY) else {
                continue;
            };
            match meta::node_offer(&n) {
                Some(Ok(inv)) => inventories.push(inv),
                Some(Err(e)) => eprintln!("dilu: {e}"),
                None => {}
            }
            for d in meta::node_devices(&name, text).into_iter().flatten() {
                let share = match (d.gpu, d.cores) {
                    (false, Some(c)) if c > 1.0 => 1.0 / c,
                    _ => 1.0,
                };
                shares.insert(d.uuid, share);
            }
        }
        *dilu_core::sync::lock(&self.usable) = shares;
        Ok(inventories)
    }
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The phase of a pod as the control plane counts it.
pub fn pod_phase(pod: &Pod) -> InstancePhase {
    let Some(status) = &pod.status else {
        return InstancePhase::Starting;
    };
    match status.phase.as_deref() {
        Some("Succeeded" | "Failed") => return InstancePhase::Exited,
        Some("Running") => {}
        _ => return InstancePhase::Starting,
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready {
        return InstancePhase::Ready;
    }
    let waiting_to_restart = status.container_statuses.iter().flatten().any(|c| {
        c.state
            .as_ref()
            .is_some_and(|s| s.waiting.is_some() || s.terminated.is_some())
            && c.restart_count > 0
    });
    if waiting_to_restart {
        InstancePhase::Restarting
    } else {
        InstancePhase::Starting
    }
}

/// How a pod's container last ended (`exit code 1`, `killed by signal 9`, `OOMKilled`), when it did.
fn last_exit(pod: &Pod) -> Option<String> {
    let c = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let terminated = c
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
    Some(match (terminated.reason.as_deref(), terminated.signal) {
        (Some("OOMKilled"), _) => "out of memory (OOMKilled)".into(),
        (_, Some(signal)) if signal > 0 => format!("killed by signal {signal}"),
        _ => format!("exit code {}", terminated.exit_code),
    })
}

/// The control plane's view of a Dilu pod; `None` for a pod without the function label.
pub fn observe(pod: &Pod, usable: &BTreeMap<String, f64>) -> Option<ObservedInstance> {
    let m = &pod.metadata;
    let id = m.name.clone()?;
    let function = label(m, meta::FUNCTION)?.to_string();
    let at = annotation(m, meta::ASSIGNMENT)
        .or_else(|| annotation(m, meta::PLANNED))
        .and_then(|a| Assignment::parse(&id, a).ok())
        .map(|a| a.device_ref())
        .unwrap_or(DeviceRef {
            node: String::new(),
            device: String::new(),
        });
    let quota = annotation(m, meta::QUOTA)
        .and_then(|q| meta::parse_quota(&id, q).ok())
        .unwrap_or(Quota::new(1.0, 1.0));
    let kind = match label(m, meta::KIND) {
        Some("training") => InstanceKind::Training,
        Some("llm-inference") => InstanceKind::LlmInference,
        _ => InstanceKind::Inference,
    };
    let port = annotation(m, meta::PORT).unwrap_or("8080");
    let endpoint = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
        .map(|ip| format!("http://{ip}:{port}"));
    let restarts = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count.max(0) as u32);
    Some(ObservedInstance {
        name: label(m, meta::INSTANCE).unwrap_or(&id).to_string(),
        function,
        template: label(m, meta::TEMPLATE).unwrap_or_default().to_string(),
        generation: label(m, meta::GENERATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
        kind,
        usable_share: usable.get(&at.device).copied().unwrap_or(1.0),
        at,
        quota,
        phase: pod_phase(pod),
        terminating: m.deletion_timestamp.is_some(),
        endpoint,
        last_exit: last_exit(pod),
        restarts,
        adopted: false,
        // The kubelet reports probe failures as events, and memory-cap refusals stay in the pod's channel on
        // its node: neither is on the pod object.
        not_ready: None,
        alloc_failures: 0,
        id,
    })
}

impl InstanceBackend for KubeBackend {
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BackendError>> {
        Box::pin(self.read_nodes())
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ObservedInstance>, BackendError>> {
        Box::pin(async move {
            // The reconciler reads the nodes just before (one read a pass); on its own, read them here.
            if dilu_core::sync::lock(&self.usable).is_empty() {
                self.read_nodes().await?;
            }
            let usable = dilu_core::sync::lock(&self.usable).clone();
            let pods = self
                .pods()
                .list(&ListParams::default().labels(meta::FUNCTION))
                .await
                .map_err(|e| api_error("listing pods", e))?;
            Ok(pods.iter().filter_map(|p| observe(p, &usable)).collect())
        })
    }

    fn create(&self, plan: InstancePlan) -> BoxFuture<'_, Result<ObservedInstance, BackendError>> {
        Box::pin(async move {
            let functions: Api<Function> =
                Api::namespaced(self.client.clone(), &self.template.namespace);
            let owner = functions
                .get(&plan.function)
                .await
                .map_err(|e| api_error(&format!("function {}", plan.function), e))?;
            if owner.deleting() {
                return Err(BackendError::Conflict(FieldError::new(
                    "function",
                    &plan.function,
                    "is being deleted",
                )));
            }
            let uid = owner.metadata.uid.clone().unwrap_or_default();
            let pod = self.template.pod(&plan, &uid);
            let created = self
                .pods()
                .create(&PostParams::default(), &pod)
                .await
                .map_err(|e| api_error(&format!("pod {}", plan.name), e))?;
            eprintln!(
                "dilu-controller: created pod {} (function {}, generation {}, planned {}/{}, request {:.2}, limit {:.2})",
                plan.name,
                plan.function,
                plan.generation,
                plan.at.node,
                plan.at.device,
                plan.quota.request,
                plan.quota.limit
            );
            observe(&created, &BTreeMap::new()).ok_or_else(|| BackendError::Failed {
                context: format!("pod {}", plan.name),
                reason: "created without its labels".into(),
            })
        })
    }

    fn set_quota<'a>(
        &'a self,
        id: &'a str,
        quota: Quota,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let patch = serde_json::json!({
                "metadata": { "annotations": {
                    meta::QUOTA: serde_json::to_value(quota).unwrap_or_default().to_string(),
                }}
            });
            self.pods()
                .patch(
                    id,
                    &PatchParams::apply(meta::FIELD_MANAGER),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(|e| api_error(&format!("pod {id}"), e))?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            match self.pods().delete(id, &DeleteParams::default()).await {
                Ok(_) => {
                    eprintln!("dilu-controller: deleting pod {id}");
                    Ok(())
                }
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(api_error(&format!("pod {id}"), e)),
            }
        })
    }

    fn logs<'a>(
        &'a self,
        id: &'a str,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<String, BackendError>> {
        Box::pin(async move {
            let params = kube::api::LogParams {
                limit_bytes: Some(max_bytes as i64),
                previous: false,
                ..kube::api::LogParams::default()
            };
            self.pods()
                .logs(id, &params)
                .await
                .map_err(|e| api_error(&format!("logs of pod {id}"), e))
        })
    }

    fn check(&self, runtime: &Runtime) -> Result<(), FieldError> {
        // Model files live in the image or a volume on the node: only the node can tell. A missing one makes
        // the instance exit, and the function's status says why.
        match runtime {
            Runtime::Onnx { model } if !model.path.is_absolute() => Err(FieldError::new(
                "model.path",
                model.path.display().to_string(),
                "must be an absolute path inside the instance's image or volume",
            )),
            Runtime::Process { process } if process.image.is_none() => Err(FieldError::new(
                "process.image",
                "(none)",
                "is required on Kubernetes: the container image that holds the program (the instance is a pod \
                 running it)",
            )),

            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dilu_api::spec::ModelSpec;
    use dilu_core::InstanceRequest;

    fn plan() -> InstancePlan {
        InstancePlan {
            name: "ocr-3".into(),
            function: "ocr".into(),
            generation: 2,
            template: "abc".into(),
            kind: InstanceKind::Inference,
            runtime: Runtime::Onnx {
                model: ModelSpec {
                    path: "/models/cls.onnx".into(),
                    input_shape: Some(vec![1, 3, 48, 192]),
                    max_batch: 8,
                    engine: Default::default(),
                },
            },
            device_class: DeviceClass::Cpu,
            batch: 4,
            max_body: 1 << 20,
            slo_ms: Some(80.0),
            at: DeviceRef {
                node: "n1".into(),
                device: "GPU-1".into(),
            },
            quota: Quota::new(0.2, 0.5),
            booking: InstanceRequest {
                kind: InstanceKind::Inference,
                service: Some("ocr".into()),
                gpu_count: 1,
                sm_request: 200,
                sm_limit: 500,
                gpu_mem_mib: 0,
                cpu_milli: 0,
                mem_mib: 0,
                gpu_types: Vec::new(),
            },
            scheduling: Default::default(),
        }
    }

    /// The path of a container's readiness probe.
    fn probe_path(c: &Container) -> Option<String> {
        c.readiness_probe.as_ref()?.http_get.as_ref()?.path.clone()
    }

    #[test]
    fn a_plan_becomes_a_pod_for_dilu_scheduler_owned_by_its_function() {
        let pod = PodTemplate::new("ml", "dilu:test").pod(&plan(), "uid-1");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.scheduler_name.as_deref(), Some("dilu-scheduler"));
        assert!(spec.node_name.is_none());
        let c = &spec.containers[0];
        let args = c.args.as_ref().unwrap();
        assert_eq!(args[0], "worker");
        assert!(
            args.windows(2).any(|w| w == ["--listen", "$(POD_IP):8080"]),
            "{args:?}"
        );
        assert!(
            args.windows(2).any(|w| w == ["--max-batch", "4"]),
            "{args:?}"
        );
        // The SLO reaches the worker, which publishes it on its quota channel.
        assert!(args.windows(2).any(|w| w == ["--slo-ms", "80"]), "{args:?}");
        assert_eq!(probe_path(c).as_deref(), Some("/v2/health/ready"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Function", "uid-1")
        );
        let booking =
            PodBooking::parse("p", annotation(&pod.metadata, meta::BOOKING).unwrap()).unwrap();
        assert_eq!((booking.sm_request, booking.sm_limit), (200, 500));
    }

    #[test]
    fn a_plans_placement_rules_go_into_the_pod_and_the_scheduler_reads_them_back() {
        use dilu_core::scheduling::{Spread, SpreadDomain, Toleration, TolerationOperator};
        let mut plan = plan();
        plan.scheduling
            .node_selector
            .insert("zone".into(), "a".into());
        plan.scheduling.tolerations.push(Toleration {
            key: "gpu".into(),
            operator: TolerationOperator::Exists,
            ..Toleration::default()
        });
        plan.scheduling.spread = Some(Spread {
            across: SpreadDomain::Device,
            max_skew: 2,
            required: false,
        });
        let pod = PodTemplate::new("ml", "dilu:test").pod(&plan, "uid-1");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_selector.as_ref().unwrap()["zone"], "a");
        assert_eq!(
            annotation(&pod.metadata, meta::SPREAD),
            Some(r#"{"across":"device","max_skew":2,"required":false}"#)
        );
        let view = crate::scheduler::pod_view(&pod, meta::SCHEDULER_NAME).unwrap();
        assert_eq!(view.rules, plan.scheduling);
        // Without rules the pod has none of it.
        let plain = PodTemplate::new("ml", "dilu:test").pod(&super::tests::plan(), "uid-1");
        assert_eq!(annotation(&plain.metadata, meta::SPREAD), None);
        assert_eq!(plain.spec.as_ref().unwrap().node_selector, None);
    }

    #[test]
    fn an_instance_carries_its_pod_uid_and_asks_one_share_of_its_class() {
        let pod = PodTemplate::new("ml", "dilu:test").pod(&plan(), "uid-1");
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let env = c.env.as_ref().unwrap();
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["POD_IP", "DILU_POD_UID"]);
        let uid = env[1]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(uid.field_path, "metadata.uid");
        let r = c.resources.as_ref().unwrap();
        let one = BTreeMap::from([(meta::CPU_SHARE.to_string(), Quantity("1".into()))]);
        assert_eq!(r.requests.as_ref(), Some(&one));
        assert_eq!(r.limits.as_ref(), Some(&one));
    }

    #[tokio::test]
    async fn a_process_function_runs_its_command_in_its_image_listening_on_the_pod_ip() {
        let process: dilu_api::ProcessSpec = serde_yaml::from_str(
            "command: [python3, serve.py, --host, $HOST, --port, $PORT]\nenv: {OMP_NUM_THREADS: '1'}\n\
             workdir: /srv\nimage: registry.example.com/resnet:1.4\nreadiness: /ready\n",
        )
        .unwrap();
        let mut plan = plan();
        plan.runtime = Runtime::Process { process };
        let backend_check = |runtime: &Runtime| -> Result<(), FieldError> {
            // check() needs no API server: build a backend around a client that is never used.
            let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
            let client = Client::try_from(config).unwrap();
            KubeBackend::new(client, PodTemplate::new("ml", "dilu:test")).check(runtime)
        };
        backend_check(&plan.runtime).unwrap();
        let pod = PodTemplate::new("ml", "dilu:test").pod(&plan, "uid-1");
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example.com/resnet:1.4"));
        assert_eq!(
            c.command.as_deref().unwrap(),
            [
                "python3",
                "serve.py",
                "--host",
                "$(POD_IP)",
                "--port",
                "8080"
            ]
        );
        assert_eq!(c.args, None);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        let env: Vec<(&str, Option<&str>)> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        // POD_IP first: the kubelet expands $(POD_IP) only from variables defined before.
        assert_eq!(env[0], ("POD_IP", None));
        for want in [
            ("HOST", Some("$(POD_IP)")),
            ("PORT", Some("8080")),
            ("DILU_FUNCTION", Some("ocr")),
            ("DILU_MAX_BATCH", Some("4")),
            ("OMP_NUM_THREADS", Some("1")),
        ] {
            assert!(env.contains(&want), "{want:?} in {env:?}");
        }
        assert_eq!(probe_path(c).as_deref(), Some("/ready"));
        // Without an image there is nothing for the pod to run.
        let Runtime::Process { process } = &mut plan.runtime else {
            unreachable!()
        };
        process.image = None;
        let e = backend_check(&plan.runtime).unwrap_err();
        assert_eq!(e.field, "process.image");
    }

    #[test]
    fn the_share_and_the_booking_follow_the_planned_device_class() {
        assert_eq!(share_resource(DeviceClass::Gpu), meta::GPU_SHARE);
        assert_eq!(share_resource(DeviceClass::Cpu), meta::CPU_SHARE);
        // The built-in runtimes compute on the CPU: a CPU share, and a CPU booking for dilu-scheduler.
        let pod = PodTemplate::new("ml", "dilu:test").pod(&plan(), "uid-1");
        let r = pod.spec.as_ref().unwrap().containers[0]
            .resources
            .clone()
            .unwrap();
        assert!(r.limits.unwrap().contains_key("dilu.io/cpu-share"));
        let annotations = pod.metadata.annotations.unwrap();
        let booking = PodBooking::parse("p", &annotations[meta::BOOKING]).unwrap();
        assert_eq!(booking.device, DeviceClass::Cpu);
    }

    #[test]
    fn a_pod_reads_back_as_the_instance_it_runs() {
        let mut pod = PodTemplate::new("ml", "dilu:test").pod(&plan(), "uid-1");
        let o = observe(&pod, &BTreeMap::new()).unwrap();
        assert_eq!(
            (o.id.as_str(), o.name.as_str(), o.function.as_str()),
            ("ocr-3", "ocr-3", "ocr")
        );
        assert_eq!(o.generation, 2);
        assert_eq!(o.phase, InstancePhase::Starting);
        assert_eq!(o.at.node, "n1", "the plan until bound");
        assert_eq!(o.quota, Quota::new(0.2, 0.5));
        assert!(o.endpoint.is_none());
        let annotations = pod.metadata.annotations.as_mut().unwrap();
        annotations.insert(
            meta::ASSIGNMENT.into(),
            Assignment {
                node: "n2".into(),
                device: "GPU-7".into(),
            }
            .annotation(),
        );
        pod.status = Some(serde_json::from_value(serde_json::json!({
            "phase": "Running",
            "podIP": "127.0.1.4",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "instance", "ready": true, "restartCount": 2, "image": "x", "imageID": "",
                "lastState": {"terminated": {"exitCode": 137, "signal": 9}}}],
        })).unwrap());
        let o = observe(&pod, &BTreeMap::from([("GPU-7".to_string(), 1.0)])).unwrap();
        assert_eq!(
            o.at,
            DeviceRef {
                node: "n2".into(),
                device: "GPU-7".into()
            }
        );
        assert_eq!(o.phase, InstancePhase::Ready);
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.1.4:8080"));
        assert_eq!(o.restarts, 2);
        assert_eq!(o.last_exit.as_deref(), Some("killed by signal 9"));
    }
}
