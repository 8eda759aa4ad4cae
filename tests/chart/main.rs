//! The Helm chart in `charts/suanli`, rendered by Helm itself (`helm template`) with the
//! values files in `tests/chart/values/`: the default install and the combinations that change
//! which objects the chart creates. Every rendering must pass `kubernetes-validate --strict` for
//! Kubernetes 1.32 and the scheduler's own config parser, and its objects must agree with each
//! other: the extender URL and the Service, the ports, the Secret's keys, the RBAC.
//!
//! `helm` and `kubernetes-validate` come from `.ci/tools` (target/ci-tools/bin), or from the
//! paths in SUANLI_HELM and SUANLI_KUBERNETES_VALIDATE. Without them the tests fail: a chart
//! check that skips itself is one nobody notices is gone.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_yaml_ng::Value;
use suanli_scheduler::config::ServerConfig;

/// The Kubernetes version the chart is rendered and validated for.
const KUBERNETES: &str = "1.32.0";
const TOKEN: &str = "chart-test-join-token";

/// One `helm install`: release, namespace, values file, and the prefix the chart's helpers
/// give the release's objects (`<fullname>-scheduler`, ...).
struct Install {
    release: &'static str,
    namespace: &'static str,
    fullname: &'static str,
    values: &'static str,
    rendered: OnceLock<Rendered>,
}

impl Install {
    /// `names`: the release, its namespace and the objects' prefix.
    const fn new(names: [&'static str; 3], values: &'static str) -> Self {
        let [release, namespace, fullname] = names;
        let rendered = OnceLock::new();
        Install {
            release,
            namespace,
            fullname,
            values,
            rendered,
        }
    }

    fn name(&self, component: &str) -> String {
        format!("{}-{component}", self.fullname)
    }

    fn values_file(&self) -> PathBuf {
        let dir = suanli_tests::workspace_root().join("tests/chart/values");
        dir.join(self.values)
    }

    /// The chart as Helm renders it for this install, validated; once per test process.
    fn rendered(&self) -> &Rendered {
        self.rendered.get_or_init(|| render(self))
    }

    fn get(&self, kind: &str, component: &str) -> &Value {
        self.rendered().get(kind, &self.name(component))
    }

    /// suanli.toml from the scheduler's Secret, read by the scheduler's own parser.
    fn scheduler_config(&self) -> ServerConfig {
        let toml = text(&self.get("Secret", "scheduler")["stringData"]["suanli.toml"]);
        let config = ServerConfig::parse(Path::new("suanli.toml"), toml);
        let refused = |e| panic!("the scheduler refuses the chart's suanli.toml: {e}\n{toml}");
        config.unwrap_or_else(refused)
    }

    fn kube_scheduler_config(&self) -> Value {
        yaml(text(
            &self.get("ConfigMap", "kube-scheduler")["data"]["config.yaml"],
        ))
    }
}

static DEFAULT: Install = Install::new(["suanli", "suanli", "suanli"], "default.yaml");
static EVERY_OPTION: Install = Install::new(["suanli", "gpu", "suanli"], "every-option.yaml");
static MINIMAL: Install = Install::new(["suanli", "suanli", "suanli"], "minimal.yaml");
static RENAMED: Install = Install::new(["gpu", "batch", "gpu-suanli"], "renamed.yaml");
static INSTALLS: [&Install; 4] = [&DEFAULT, &EVERY_OPTION, &MINIMAL, &RENAMED];

// ---- running the tools -----------------------------------------------------------------------

fn chart_dir() -> PathBuf {
    suanli_tests::workspace_root().join("charts/suanli")
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("paths are UTF-8")
}

/// Runs a tool from $var or target/ci-tools/bin, or fails saying how to install it.
fn run_tool(var: &str, name: &str, args: &[&str]) -> Output {
    let program = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        let path = suanli_tests::workspace_root().join("target/ci-tools/bin");
        let path = path.join(name);
        assert!(
            path.is_file(),
            "{} is missing: run .ci/tools to install helm and kubernetes-validate into \
             target/ci-tools, or set {var} to a {name} executable",
            path.display()
        );
        path
    });
    let output = Command::new(&program).args(args).output();
    output.unwrap_or_else(|e| panic!("{}: {e}; run .ci/tools, or set {var}", program.display()))
}

fn combined(output: &Output) -> String {
    String::from_utf8_lossy(&[&output.stdout[..], &output.stderr[..]].concat()).into_owned()
}

/// `helm template` (or `helm lint --strict`) for Kubernetes 1.32: its output, or its error.
fn helm(command: &str, install: &Install, values: Option<&Path>) -> Result<String, String> {
    let chart = chart_dir();
    let mut args = vec![command, utf8(&chart), "--namespace", install.namespace];
    args.extend(["--kube-version", KUBERNETES]);
    match command {
        "template" => args.insert(1, install.release),
        _ => args.push("--strict"),
    }
    if let Some(values) = values {
        args.extend(["--values", utf8(values)]);
    }
    let output = run_tool("SUANLI_HELM", "helm", &args);
    match output.status.success() {
        true => Ok(String::from_utf8(output.stdout).expect("helm writes UTF-8")),
        false => Err(combined(&output)),
    }
}

/// The objects of one rendering.
struct Rendered {
    objects: Vec<Value>,
}

fn render(install: &Install) -> Rendered {
    let values = install.values_file();
    let text = helm("template", install, Some(&values))
        .unwrap_or_else(|e| panic!("helm template with {}:\n{e}", values.display()));
    let objects: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("helm template writes YAML"))
        .filter(|doc: &Value| !doc.is_null())
        .collect();

    let manifests = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(manifests.path(), &text).expect("write the manifests");
    let path = utf8(manifests.path());
    let args = ["--kubernetes-version", KUBERNETES, "--strict", path];
    let output = run_tool("SUANLI_KUBERNETES_VALIDATE", "kubernetes-validate", &args);
    let report = combined(&output);
    let passed = report.matches(" passed for resource ").count();
    // Anything else is a refusal, or a warning such as an object of a kind it has no schema for.
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.contains(" passed for "))
        .collect();
    assert!(
        output.status.success() && problems.is_empty() && passed == objects.len(),
        "kubernetes-validate --strict for Kubernetes {KUBERNETES} refuses the chart rendered \
         with {} ({passed} of {} objects passed):\n{}",
        values.display(),
        objects.len(),
        problems.join("\n")
    );
    Rendered { objects }
}

// ---- reading what was rendered ---------------------------------------------------------------

impl Rendered {
    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        let is = |o: &&Value| o["kind"] == kind && o["metadata"]["name"] == name;
        self.objects.iter().find(is)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        let list = || self.list();
        self.find(kind, name)
            .unwrap_or_else(|| panic!("no {kind}/{name} in {:?}", list()))
    }

    /// `Kind/name` of every object.
    fn list(&self) -> BTreeSet<String> {
        let id = |o: &Value| format!("{}/{}", text(&o["kind"]), text(&o["metadata"]["name"]));
        self.objects.iter().map(id).collect()
    }
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value:?} is not a string"))
}

fn strings(value: &Value) -> Vec<&str> {
    let items = value.as_sequence().map(Vec::as_slice).unwrap_or_default();
    items.iter().map(text).collect()
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn pod(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

/// The first place where `actual` lacks what the YAML fragment `expected` says: each key of a
/// mapping must be there with a matching value, and each item of a list must match an item of
/// the actual list (for items with a `name`, the one of that name). So a fragment reads like
/// the part of the manifest it checks.
fn mismatch(actual: &Value, expected: &Value, at: &str) -> Option<String> {
    let show =
        |v: &Value| serde_yaml_ng::to_string(v).map_or(format!("{v:?}"), |s| s.trim().into());
    match (actual, expected) {
        (Value::Mapping(actual), Value::Mapping(expected)) => {
            expected.iter().find_map(|(key, want)| {
                let at = format!("{at}.{}", key.as_str().unwrap_or("?"));
                match actual.get(key) {
                    Some(got) => mismatch(got, want, &at),
                    None => Some(format!("{at} is missing")),
                }
            })
        }
        (Value::Sequence(actual), Value::Sequence(expected)) => expected.iter().find_map(|want| {
            let same_name = |got: &&Value| want["name"].is_string() && got["name"] == want["name"];
            match (actual.iter().find(same_name), actual.as_slice()) {
                (Some(got), _) => mismatch(got, want, &format!("{at}[{}]", text(&want["name"]))),
                _ if actual.iter().any(|got| mismatch(got, want, at).is_none()) => None,
                // With one candidate, say where it differs.
                (None, [only]) => mismatch(only, want, &format!("{at}[0]")),
                (None, _) => Some(format!("{at} has no item {}", show(want))),
            }
        }),
        _ if actual == expected => None,
        _ => Some(format!("{at} is {}, not {}", show(actual), show(expected))),
    }
}

#[track_caller]
fn assert_has(actual: &Value, expected: &str) {
    if let Some(problem) = mismatch(actual, &yaml(expected), "") {
        let actual = serde_yaml_ng::to_string(actual).expect("YAML");
        panic!("{problem}\n---- in:\n{actual}");
    }
}

#[test]
fn fragments_match_what_they_name_and_nothing_else() {
    let pod = yaml("containers: [{name: a, args: [x, y], ports: [{containerPort: 1}]}]");
    assert_has(&pod, "containers: [{name: a, args: [y]}]");
    assert_has(&pod, "containers: [{ports: [{containerPort: 1}]}]");
    for wrong in [
        "containers: [{name: b}]",
        "{containers: [{name: a, args: [z]}]}",
        "x: 1",
    ] {
        assert!(mismatch(&pod, &yaml(wrong), "").is_some(), "{wrong}");
    }
}

// ---- Helm and the schemas --------------------------------------------------------------------

#[test]
fn helm_lint_passes_strictly_for_kubernetes_1_32() {
    for install in [&DEFAULT, &EVERY_OPTION] {
        let values = install.values_file();
        if let Err(e) = helm("lint", install, Some(&values)) {
            panic!("helm lint --strict with {}:\n{e}", values.display());
        }
    }
}

#[test]
fn an_install_without_a_join_token_fails() {
    let error = helm("template", &DEFAULT, None).expect_err("no join token, no install");
    assert!(error.contains("auth.joinToken is required"), "{error}");
}

#[test]
fn every_install_renders_valid_objects_that_carry_the_charts_labels() {
    let chart = yaml(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart"));
    let root = std::fs::read_to_string(suanli_tests::workspace_root().join("Cargo.toml"));
    let manifest: toml::Table = toml::from_str(&root.expect("Cargo.toml")).expect("TOML");
    let version = text(&chart["appVersion"]);
    let workspace = manifest["workspace"]["package"]["version"].as_str();
    assert_eq!(
        Some(version),
        workspace,
        "appVersion is the workspace version"
    );
    // The default image is this release's.
    let scheduler = pod(DEFAULT.get("Deployment", "scheduler"));
    assert_has(
        scheduler,
        &format!("containers: [{{image: 'suanli:{version}'}}]"),
    );

    for install in INSTALLS {
        for object in &install.rendered().objects {
            let metadata = &object["metadata"];
            // So that `helm` and `kubectl -l` find every object of a release.
            let labels = format!(
                "labels: {{helm.sh/chart: suanli-{}, app.kubernetes.io/managed-by: Helm, \
                 app.kubernetes.io/instance: {}, app.kubernetes.io/version: '{version}'}}",
                text(&chart["version"]),
                install.release,
            );
            assert_has(metadata, &labels);
            let namespace = metadata["namespace"].as_str();
            match text(&object["kind"]) {
                "ClusterRole" | "ClusterRoleBinding" => assert_eq!(namespace, None),
                // Bound where the Role it names lives: see the RBAC test.
                _ if metadata["name"] == install.name("kube-scheduler-auth-reader").as_str() => {
                    assert_eq!(namespace, Some("kube-system"))
                }
                _ => assert_eq!(namespace, Some(install.namespace), "{metadata:?}"),
            }
            // A workload whose selector does not select its own pods is refused by the API.
            if let Some(selector) = object["spec"]["selector"]["matchLabels"].as_mapping() {
                let labels = &object["spec"]["template"]["metadata"]["labels"];
                assert!(selector.iter().all(|(k, v)| labels[k] == *v), "{labels:?}");
            }
        }
        install.scheduler_config();
    }
}

#[test]
fn the_default_install_creates_these_objects() {
    let expected = "
        ClusterRole/suanli-agent ClusterRole/suanli-scheduler ClusterRoleBinding/suanli-agent
        ClusterRoleBinding/suanli-kube-scheduler-as-kube-scheduler
        ClusterRoleBinding/suanli-kube-scheduler-as-volume-scheduler
        ClusterRoleBinding/suanli-scheduler ConfigMap/suanli-kube-scheduler DaemonSet/suanli-agent
        Deployment/suanli-kube-scheduler Deployment/suanli-scheduler
        PersistentVolumeClaim/suanli-scheduler Role/suanli-kube-scheduler-leader-election
        RoleBinding/suanli-kube-scheduler-auth-reader
        RoleBinding/suanli-kube-scheduler-leader-election Secret/suanli-scheduler
        Service/suanli-scheduler ServiceAccount/suanli-agent ServiceAccount/suanli-kube-scheduler
        ServiceAccount/suanli-scheduler";
    let expected: BTreeSet<String> = expected.split_whitespace().map(String::from).collect();
    assert_eq!(DEFAULT.rendered().list(), expected);
}

// ---- the extender contract -------------------------------------------------------------------

#[test]
fn kube_scheduler_calls_the_extender_endpoints_on_the_service_http_port() {
    let values = yaml(&std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values"));
    let tag = text(&values["kubeScheduler"]["image"]["tag"]);
    let shared = ("nvidia.com/gpu.shared", "suanli-shared");
    for (install, http, (resource, profile), tag) in [
        (&DEFAULT, 7080, ("nvidia.com/gpu", "suanli"), tag),
        (&EVERY_OPTION, 9091, shared, "v1.32.4"),
        (&RENAMED, 7080, ("nvidia.com/gpu", "suanli"), tag),
    ] {
        let (ns, scheduler) = (install.namespace, install.name("scheduler"));
        let kube = install.name("kube-scheduler");
        // Plain HTTP to the Service's DNS name; the verbs are the scheduler's endpoints.
        let config = install.kube_scheduler_config();
        assert_has(
            &config,
            &format!(
                "
                apiVersion: kubescheduler.config.k8s.io/v1
                kind: KubeSchedulerConfiguration
                leaderElection: {{resourceLock: leases, resourceNamespace: {ns}, resourceName: {kube}}}
                profiles: [{{schedulerName: {profile}}}]
                extenders:
                  - urlPrefix: http://{scheduler}.{ns}.svc:{http}/extender
                    filterVerb: filter
                    prioritizeVerb: prioritize
                    bindVerb: bind
                    preemptVerb: preempt
                    nodeCacheCapable: false
                    enableHTTPS: false
                    httpTimeout: 30s
                    # Without Suanli no pod of the profile is placed: its GPUs would go unaccounted.
                    ignorable: false
                    managedResources: [{{name: {resource}, ignoredByScheduler: true}}]"
            ),
        );
        let extender = &config["extenders"][0];
        let lists = [
            &config["profiles"],
            &config["extenders"],
            &extender["managedResources"],
        ];
        assert!(
            lists
                .iter()
                .all(|l| l.as_sequence().map(Vec::len) == Some(1)),
            "{config:?}"
        );
        let weight = extender["weight"]
            .as_u64()
            .expect("weight is a whole number");
        assert!((1..=100).contains(&weight), "weight {weight}");
        // Suanli accounts for the resource kube-scheduler leaves to it.
        assert_eq!(install.scheduler_config().kubernetes.gpu_resource, resource);

        // The kube-scheduler runs that file, restarts when it changes, and serves its probes.
        let deployment = install.get("Deployment", "kube-scheduler");
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert!(annotations["checksum/config"].is_string(), "{deployment:?}");
        let probe = "{httpGet: {path: /healthz, port: https, scheme: HTTPS}}";
        assert_has(
            pod(deployment),
            &format!(
                "
                serviceAccountName: {kube}
                volumes: [{{name: config, configMap: {{name: {kube}}}}}]
                containers:
                  - name: kube-scheduler
                    image: registry.k8s.io/kube-scheduler:{tag}
                    command: [--config=/etc/kubernetes/suanli/config.yaml]
                    volumeMounts: [{{name: config, mountPath: /etc/kubernetes/suanli}}]
                    ports: [{{name: https, containerPort: 10259}}]
                    livenessProbe: {probe}
                    readinessProbe: {probe}"
            ),
        );
    }
}

#[test]
fn scheduler_listens_where_the_service_and_pod_point() {
    for (install, grpc, http) in [(&DEFAULT, 7070, 7080), (&EVERY_OPTION, 9090, 9091)] {
        let config = install.scheduler_config();
        // Reachable from other pods, not only from inside its own.
        assert_eq!(config.grpc_addr, SocketAddr::from(([0, 0, 0, 0], grpc)));
        assert_eq!(config.http_addr, SocketAddr::from(([0, 0, 0, 0], http)));
        let name = install.name("scheduler");
        let service = install.get("Service", "scheduler");
        assert_has(
            service,
            &format!(
                "spec: {{ports: [{{name: grpc, port: {grpc}, targetPort: grpc}}, \
                 {{name: http, port: {http}, targetPort: http}}]}}"
            ),
        );
        let deployment = install.get("Deployment", "scheduler");
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let selector = service["spec"]["selector"]
            .as_mapping()
            .expect("a selector");
        assert!(
            selector.iter().all(|(k, v)| labels[k] == *v),
            "the Service selects the pod"
        );
        // One pod at a time owns the SQLite file, even during a rollout. suanli.toml comes
        // from the Secret, mounted where --config points; the database sits on the volume.
        let data_dir = config.data_dir.display();
        let probe = "{httpGet: {path: /healthz, port: http}}";
        assert_has(
            deployment,
            &format!(
                "
                spec:
                  replicas: 1
                  strategy: {{type: Recreate}}
                  template:
                    spec:
                      serviceAccountName: {name}
                      volumes:
                        - {{name: config, secret: {{secretName: {name}, items: [{{key: suanli.toml}}]}}}}
                      containers:
                        - name: scheduler
                          args: [--config=/etc/suanli/suanli.toml]
                          ports: [{{name: grpc, containerPort: {grpc}}}, {{name: http, containerPort: {http}}}]
                          volumeMounts:
                            - {{name: config, mountPath: /etc/suanli}}
                            - {{name: data, mountPath: {data_dir}}}
                          livenessProbe: {probe}
                          readinessProbe: {probe}"
            ),
        );
    }
    // The database volume: a new claim, an existing one, or (persistence off) none.
    for (install, volume, claims) in [
        (
            &DEFAULT,
            "persistentVolumeClaim: {claimName: suanli-scheduler}",
            1,
        ),
        (
            &RENAMED,
            "persistentVolumeClaim: {claimName: suanli-database}",
            0,
        ),
        (&MINIMAL, "emptyDir: {}", 0),
    ] {
        let scheduler = pod(install.get("Deployment", "scheduler"));
        assert_has(scheduler, &format!("volumes: [{{name: data, {volume}}}]"));
        let objects = install.rendered().list();
        let made = objects
            .iter()
            .filter(|o| o.starts_with("PersistentVolumeClaim/"));
        assert_eq!(made.count(), claims, "{objects:?}");
    }
    // An uninstall keeps the database.
    assert_has(
        EVERY_OPTION.get("PersistentVolumeClaim", "scheduler"),
        "
        metadata: {annotations: {helm.sh/resource-policy: keep}}
        spec: {storageClassName: fast-ssd, resources: {requests: {storage: 20Gi}}}",
    );
    let log_json = |install: &Install| {
        let args = &pod(install.get("Deployment", "scheduler"))["containers"][0]["args"];
        strings(args).contains(&"--log-json")
    };
    assert_eq!((log_json(&DEFAULT), log_json(&MINIMAL)), (true, false));
}

#[test]
fn the_scheduler_accepts_the_suanli_toml_the_chart_writes() {
    let config = DEFAULT.scheduler_config();
    assert_eq!(config.auth.join_tokens, [TOKEN]);
    assert!(config.auth.admin_tokens.is_empty() && config.auth.tenants.is_empty());
    assert_eq!(config.data_dir, Path::new("/var/lib/suanli"));
    assert_eq!(config.policy, "fgd");
    assert_eq!(config.kubernetes.api, "in-cluster");
    assert_eq!(config.kubernetes.reconcile_interval_s, 10);
    assert_eq!(config.preemption.min_runtime_s, 300);
    // The agents' copy of the token is the scheduler's.
    let secret = DEFAULT.get("Secret", "scheduler");
    assert_has(secret, &format!("stringData: {{join-token: {TOKEN}}}"));

    let config = EVERY_OPTION.scheduler_config();
    let tenants = &config.auth.tenants;
    assert_eq!(config.auth.admin_tokens, ["chart-test-admin-token"]);
    assert_eq!(
        tenants["research"],
        ["research-token-1", "research-token-2"]
    );
    assert_eq!(tenants["prod"], ["prod-token-1"]);
    assert_eq!(config.heartbeat_timeout_ms, 2_000_000);
    assert!(!config.preemption.enabled);
    assert_eq!(config.preemption.min_runtime_s, 1_200_000);
    assert_eq!(config.preemption.max_victims, 4);
    assert_eq!(config.data_dir, Path::new("/data/suanli"));
    assert_eq!(config.policy, "best-fit");
    assert_eq!(config.kubernetes.reconcile_interval_s, 30);
    // extraConfig's tables land as tables, not inside [kubernetes] above them.
    assert_eq!(config.quotas["research"]["H100"].guaranteed, 32);
    assert_eq!(config.domains.len(), 1);

    // A changed suanli.toml changes the pod template, so the scheduler restarts with it.
    let checksum = |install: &Install| {
        let template = &install.get("Deployment", "scheduler")["spec"]["template"];
        template["metadata"]["annotations"]["checksum/config"].clone()
    };
    assert!(checksum(&DEFAULT).is_string());
    assert_ne!(checksum(&DEFAULT), checksum(&EVERY_OPTION));
}

// ---- the agent -------------------------------------------------------------------------------

#[test]
fn agents_dial_the_grpc_port_as_their_kubernetes_node() {
    for (install, grpc, [provider, region, domain]) in [
        (&DEFAULT, 7070, ["local"; 3]),
        (&EVERY_OPTION, 9090, ["acme", "cn-east-1", "dc-a"]),
        (&RENAMED, 7070, ["local"; 3]),
    ] {
        let (ns, scheduler) = (install.namespace, install.name("scheduler"));
        // The CID prefix from values, the node name Kubernetes', the token from the Secret
        // (never a flag, which every process listing shows), the host's /sys read-only.
        let agent = pod(install.get("DaemonSet", "agent"));
        assert_has(
            agent,
            &format!(
                "
                containers:
                  - name: agent
                    args:
                      - run
                      - --scheduler=http://{scheduler}.{ns}.svc:{grpc}
                      - --provider={provider}
                      - --region={region}
                      - --domain={domain}
                      - --node=$(NODE_NAME)
                      - --data-dir=/var/lib/suanli-agent
                      - --sysfs-root=/host
                    env:
                      - {{name: NODE_NAME, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
                      - name: SUANLI_AGENT_TOKEN
                        valueFrom: {{secretKeyRef: {{name: {scheduler}, key: join-token}}}}
                    volumeMounts:
                      - {{name: host-sys, mountPath: /host/sys, readOnly: true}}
                      - {{name: data, mountPath: /var/lib/suanli-agent}}
                volumes: [{{name: host-sys, hostPath: {{path: /sys}}}}]"
            ),
        );
        let args = strings(&agent["containers"][0]["args"]);
        assert!(!args.iter().any(|a| a.starts_with("--token")), "{args:?}");
        let secret = install.get("Secret", "scheduler");
        assert_has(secret, &format!("stringData: {{join-token: {TOKEN}}}"));
    }

    // By default: on GPU nodes, unprivileged, labelling its Node, reading kubelet's devices.
    let agent = pod(DEFAULT.get("DaemonSet", "agent"));
    assert_has(
        agent,
        r#"
        serviceAccountName: suanli-agent
        automountServiceAccountToken: true
        nodeSelector: {nvidia.com/gpu.present: "true"}
        tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
        volumes:
          - {name: data, hostPath: {path: /var/lib/suanli-agent}}
          - {name: pod-resources, hostPath: {path: /var/lib/kubelet/pod-resources}}
        containers:
          - name: agent
            args:
              - --kube-api=in-cluster
              - --kubelet-socket=/var/lib/kubelet/pod-resources/kubelet.sock
              - --gpu-resource=nvidia.com/gpu
            securityContext: {privileged: false, allowPrivilegeEscalation: false}
            volumeMounts: [{name: pod-resources, mountPath: /var/lib/kubelet/pod-resources}]"#,
    );
    let args = strings(&agent["containers"][0]["args"]);
    assert!(!args.iter().any(|a| a.starts_with("--fixture")), "{args:?}");
}

#[test]
fn optional_parts_follow_their_values() {
    // Everything off: no Node labelling (so no API token), no kubelet socket, no placement.
    let rendered = MINIMAL.rendered();
    assert!(rendered.find("ClusterRole", "suanli-agent").is_none());
    assert!(
        rendered
            .find("ClusterRoleBinding", "suanli-agent")
            .is_none()
    );
    let account = MINIMAL.get("ServiceAccount", "agent");
    assert_has(account, "automountServiceAccountToken: false");
    let agent = pod(MINIMAL.get("DaemonSet", "agent"));
    assert_has(agent, "automountServiceAccountToken: false");
    let args = strings(&agent["containers"][0]["args"]);
    let off = [
        "--kube-api",
        "--kubelet-socket",
        "--gpu-resource",
        "--fixture",
    ];
    assert!(
        !args.iter().any(|a| off.iter().any(|o| a.starts_with(o))),
        "{args:?}"
    );
    assert!(
        !serde_yaml_ng::to_string(agent)
            .expect("YAML")
            .contains("pod-resources")
    );
    assert!(agent["nodeSelector"].is_null() && agent["tolerations"].is_null());
    assert_has(
        &MINIMAL.kube_scheduler_config(),
        "leaderElection: {leaderElect: false}",
    );

    // Everything on. The recorded probe is a ConfigMap, mounted where --fixture points.
    let fixture = EVERY_OPTION.get("ConfigMap", "agent-fixture");
    let probe: serde_json::Value =
        serde_json::from_str(text(&fixture["data"]["fixture.json"])).expect("the fixture is JSON");
    assert_eq!(probe["nvml"]["reason"], "recorded");
    let agent = pod(EVERY_OPTION.get("DaemonSet", "agent"));
    assert_has(
        agent,
        "
        runtimeClassName: nvidia
        volumes:
          - {name: data, hostPath: {path: /opt/suanli-agent}}
          - {name: fixture, configMap: {name: suanli-agent-fixture}}
        containers:
          - name: agent
            args: [--fixture=/etc/suanli-agent/fixture.json, --gpu-resource=nvidia.com/gpu.shared]
            env: [{name: SUANLI_AGENT_LEAF, value: leaf-7}]
            volumeMounts: [{name: fixture, mountPath: /etc/suanli-agent}]
            securityContext: {privileged: true}",
    );
    // privileged: true alone is enough: the API refuses it beside allowPrivilegeEscalation: false.
    let security = &agent["containers"][0]["securityContext"];
    assert!(
        security["allowPrivilegeEscalation"].is_null(),
        "{security:?}"
    );

    // Every pod pulls with the pull secrets; the Suanli pods use the configured image, and the
    // control-plane pods run where they are told.
    let control_plane = "node-role.kubernetes.io/control-plane";
    let placed = format!(
        "{{nodeSelector: {{{control_plane}: ''}}, tolerations: [{{key: {control_plane}}}]}}"
    );
    let image =
        "containers: [{image: 'registry.example.com/suanli:0.1.0-rc.1', imagePullPolicy: Always}]";
    for (kind, component) in [
        ("Deployment", "scheduler"),
        ("Deployment", "kube-scheduler"),
        ("DaemonSet", "agent"),
    ] {
        let spec = pod(EVERY_OPTION.get(kind, component));
        assert_has(spec, "imagePullSecrets: [{name: registry-credentials}]");
        if component != "kube-scheduler" {
            assert_has(spec, image);
        }
        if kind == "Deployment" {
            assert_has(spec, &placed);
        }
    }
    let scheduler = pod(EVERY_OPTION.get("Deployment", "scheduler"));
    assert!(
        scheduler["affinity"]["nodeAffinity"].is_mapping(),
        "{scheduler:?}"
    );
    assert_has(
        EVERY_OPTION.get("Deployment", "kube-scheduler"),
        "spec: {replicas: 2}",
    );
    assert_has(
        EVERY_OPTION.get("Service", "scheduler"),
        "spec: {type: NodePort}",
    );
}

// ---- permissions -----------------------------------------------------------------------------

/// Asserts that a binding of `kind` gives `role` to the install's service account `account`,
/// and returns it.
fn binding<'r>(install: &'r Install, kind: &str, role: &str, account: &str) -> &'r Value {
    let role_kind = kind.trim_end_matches("Binding");
    let fragment = yaml(&format!(
        "{{roleRef: {{kind: {role_kind}, name: '{role}'}}, \
         subjects: [{{kind: ServiceAccount, name: {account}, namespace: {}}}]}}",
        install.namespace
    ));
    let mut objects = install.rendered().objects.iter();
    let found = objects.find(|o| o["kind"] == kind && mismatch(o, &fragment, "").is_none());
    found.unwrap_or_else(|| panic!("no {kind} gives {role_kind} {role} to {account}"))
}

/// Asserts that a role grants exactly these rules: no more than its binary needs.
#[track_caller]
fn assert_rules(role: &Value, rules: &str) {
    assert_eq!(
        role["rules"],
        yaml(rules),
        "{}",
        text(&role["metadata"]["name"])
    );
}

#[test]
fn the_scheduler_may_bind_and_annotate_pods_and_read_nodes() {
    for install in [&DEFAULT, &RENAMED] {
        let name = install.name("scheduler");
        install.get("ServiceAccount", "scheduler");
        assert_rules(
            install.get("ClusterRole", "scheduler"),
            r#"
            - {apiGroups: [""], resources: [pods], verbs: [get, list, watch, patch]}
            - {apiGroups: [""], resources: [pods/binding], verbs: [create]}
            - {apiGroups: [""], resources: [nodes], verbs: [get, list, watch]}"#,
        );
        binding(install, "ClusterRoleBinding", &name, &name);
    }
}

#[test]
fn the_kube_scheduler_holds_the_standard_roles_and_its_lease() {
    for install in [&DEFAULT, &RENAMED] {
        let account = install.name("kube-scheduler");
        install.get("ServiceAccount", "kube-scheduler");
        for role in ["system:kube-scheduler", "system:volume-scheduler"] {
            binding(install, "ClusterRoleBinding", role, &account);
        }
        // system:kube-scheduler covers only the lease named kube-scheduler; this one has its own.
        let lease = install.get("Role", "kube-scheduler-leader-election");
        let verbs = "[get, list, watch, create, update, patch]";
        let rules =
            format!("[{{apiGroups: [coordination.k8s.io], resources: [leases], verbs: {verbs}}}]");
        assert_rules(lease, &rules);
        binding(
            install,
            "RoleBinding",
            text(&lease["metadata"]["name"]),
            &account,
        );
        // To authenticate the callers of its /healthz and /metrics.
        let reader = "extension-apiserver-authentication-reader";
        let reader = binding(install, "RoleBinding", reader, &account);
        assert_eq!(
            reader["metadata"]["namespace"].as_str(),
            Some("kube-system")
        );
    }
}

#[test]
fn agents_may_label_their_nodes_and_nothing_else() {
    let role = DEFAULT.get("ClusterRole", "agent");
    assert_rules(
        role,
        r#"[{apiGroups: [""], resources: [nodes], verbs: [get, patch]}]"#,
    );
    binding(
        &DEFAULT,
        "ClusterRoleBinding",
        "suanli-agent",
        "suanli-agent",
    );
}
