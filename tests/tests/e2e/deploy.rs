//! The deployment files in `deploy/` parse, have the shape their platform needs, and name only
//! settings the binaries really read (a renamed flag must not leave a unit silently ignoring
//! its configuration).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Args as _;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The environment variables a daemon's flags read.
fn env_vars(command: clap::Command) -> BTreeSet<String> {
    let command = herald_core::daemon::Logging::augment_args(command);
    command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

fn agent_env() -> BTreeSet<String> {
    env_vars(herald_agent::Config::augment_args(clap::Command::new(
        "agent",
    )))
}

fn control_plane_env() -> BTreeSet<String> {
    env_vars(herald_control_plane::Config::augment_args(
        clap::Command::new("control-plane"),
    ))
}

/// What the `herald` CLI reads (an application container uses these to reach its agent).
const CLI_ENV: [&str; 5] = [
    "HERALD_CONTROL_PLANE",
    "HERALD_AGENT",
    "HERALD_TOKEN",
    "HERALD_AGENT_TOKEN",
    "HERALD_OUTPUT",
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files(dir: &str, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join(dir))
        .expect("deploy dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// Every mapping under `node` (itself included) with key `key`, e.g. all container lists.
fn find<'a>(node: &'a Yaml, key: &str, out: &mut Vec<&'a Yaml>) {
    match node {
        Yaml::Hash(hash) => {
            for (k, v) in hash {
                if k.as_str() == Some(key) {
                    out.push(v);
                }
                find(v, key, out);
            }
        }
        Yaml::Array(items) => items.iter().for_each(|item| find(item, key, out)),
        _ => {}
    }
}

#[test]
fn kubernetes_manifests_are_complete_and_use_real_settings() {
    let manifests = files("kubernetes", "yaml");
    assert!(manifests.len() >= 3, "{manifests:?}");
    let (agent, control_plane) = (agent_env(), control_plane_env());
    let mut kinds = BTreeSet::new();
    for path in &manifests {
        let docs = YamlLoader::load_from_str(&read(path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in docs.iter().filter(|d| !d.is_null()) {
            let where_ = format!("{} ({:?})", path.display(), doc["kind"].as_str());
            assert!(doc["apiVersion"].as_str().is_some(), "{where_}: apiVersion");
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{where_}: kind"));
            assert!(doc["metadata"]["name"].as_str().is_some(), "{where_}: name");
            kinds.insert(kind.to_owned());

            let mut containers = vec![];
            find(doc, "containers", &mut containers);
            find(doc, "initContainers", &mut containers);
            for container in containers
                .iter()
                .flat_map(|list| list.as_vec().into_iter().flatten())
            {
                let name = container["name"].as_str().expect("container name");
                let image = container["image"].as_str().unwrap_or_default();
                let known: BTreeSet<String> = if name.contains("control-plane") {
                    control_plane.clone()
                } else if name.contains("agent") && image.contains("herald") {
                    agent.clone()
                } else {
                    CLI_ENV.iter().map(|s| s.to_string()).collect()
                };
                for var in container["env"].as_vec().into_iter().flatten() {
                    let var = var["name"].as_str().expect("env name");
                    if var.starts_with("HERALD_") {
                        assert!(
                            known.contains(var),
                            "{where_}: {name} sets {var}, which it does not read"
                        );
                    }
                }
                if known == agent {
                    agent_would_start(container, &where_);
                }
            }
            if matches!(kind, "Deployment" | "DaemonSet") {
                let pod = &doc["spec"]["template"]["spec"];
                let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
                assert!(grace > 30, "{where_}: the pod must outlast the 30 s drain");
            }
        }
    }
    for kind in ["Deployment", "DaemonSet", "Service"] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    // The control plane and the per-node agent are probed over gRPC health.
    for file in ["control-plane.yaml", "agent-daemonset.yaml"] {
        let docs = YamlLoader::load_from_str(&read(&deploy_dir().join("kubernetes").join(file)))
            .expect("parses");
        let mut probes = vec![];
        for doc in &docs {
            find(doc, "readinessProbe", &mut probes);
        }
        assert!(
            probes.iter().any(|p| !p["grpc"]["port"].is_badvalue()),
            "{file}: a gRPC readiness probe"
        );
    }
    // The control plane speaks TLS, which kubelet's gRPC probes do not: they check its plain
    // health port.
    let docs = YamlLoader::load_from_str(&read(
        &deploy_dir().join("kubernetes").join("control-plane.yaml"),
    ))
    .expect("parses");
    let mut containers = vec![];
    for doc in &docs {
        find(doc, "containers", &mut containers);
    }
    let container = containers
        .iter()
        .flat_map(|list| list.as_vec().into_iter().flatten())
        .find(|c| c["name"].as_str() == Some("control-plane"))
        .expect("the control-plane container");
    let env = |name: &str| {
        container["env"]
            .as_vec()
            .into_iter()
            .flatten()
            .find(|v| v["name"].as_str() == Some(name))
            .and_then(|v| v["value"].as_str())
            .map(str::to_owned)
    };
    assert!(env("HERALD_TLS_CERT_FILE").is_some(), "the API speaks TLS");
    let health: std::net::SocketAddr = env("HERALD_HEALTH_LISTEN")
        .expect("a plain health port")
        .parse()
        .expect("an address");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            container[probe]["grpc"]["port"].as_i64(),
            Some(i64::from(health.port())),
            "{probe}"
        );
    }
}

/// Checks that the agent's settings in `container` pass the agent's own start-up checks: a
/// manifest that makes the agent listen beyond loopback without an Emit token would crash-loop.
/// Values from Secrets count as present (with a stand-in of valid length).
fn agent_would_start(container: &Yaml, where_: &str) {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Agent {
        #[command(flatten)]
        config: herald_agent::Config,
        #[command(flatten)]
        _logging: herald_core::daemon::Logging,
    }
    let mut args = vec!["herald-agent".to_owned()];
    for var in container["env"].as_vec().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name");
        let Some(flag) = name.strip_prefix("HERALD_") else {
            continue;
        };
        let value = match var["value"].as_str() {
            Some(value) => value.to_owned(),
            None => "from-a-kubernetes-secret-0123456789".to_owned(),
        };
        let flag = match flag {
            "AGENT_ID" => "id".to_owned(),
            other => other.to_lowercase().replace('_', "-"),
        };
        if value == "true" && flag == "allow-remote-emit" {
            args.push(format!("--{flag}"));
        } else {
            args.push(format!("--{flag}={value}"));
        }
    }
    let agent = Agent::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("{where_}: the agent refuses its settings {args:?}: {e}"));
    if let Err(why) = agent.config.emit_access.check(&agent.config.listen) {
        panic!("{where_}: the agent would not start: {why}");
    }
    if let Err(why) = agent.config.check_control_plane_transport() {
        panic!("{where_}: the agent would not start: {why}");
    }
}

/// `KEY=value` settings of a systemd unit, by section.
fn unit_settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut settings = vec![];
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=value: {line}"));
        settings.push((
            section.clone(),
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    settings
}

#[test]
fn systemd_units_notify_readiness_and_use_real_settings() {
    let units = files("systemd", "service");
    assert_eq!(units.len(), 2, "{units:?}");
    for unit in &units {
        let text = read(unit);
        let settings = unit_settings(&text);
        let get = |section: &str, key: &str| -> Vec<&str> {
            settings
                .iter()
                .filter(|(s, k, _)| s == section && k == key)
                .map(|(_, _, v)| v.as_str())
                .collect()
        };
        let is_agent = unit.to_string_lossy().contains("agent");
        let (binary, known) = if is_agent {
            ("herald-agent", agent_env())
        } else {
            ("herald-control-plane", control_plane_env())
        };
        assert_eq!(get("Service", "Type"), ["notify"], "{}", unit.display());
        let exec = get("Service", "ExecStart");
        assert!(
            exec.len() == 1 && exec[0].split_whitespace().next().unwrap().ends_with(binary),
            "{}: ExecStart {exec:?}",
            unit.display()
        );
        assert_eq!(get("Service", "KillSignal"), ["SIGTERM"]);
        assert!(!get("Install", "WantedBy").is_empty());
        for env in get("Service", "Environment") {
            let var = env.trim_matches('"').split('=').next().unwrap();
            if var.starts_with("HERALD_") {
                assert!(
                    known.contains(var),
                    "{}: {var} is not read by {binary}",
                    unit.display()
                );
            }
        }
        let env_file = get("Service", "EnvironmentFile");
        assert_eq!(env_file.len(), 1, "{}", unit.display());
        let example = deploy_dir().join("systemd").join(if is_agent {
            "agent.env"
        } else {
            "control-plane.env"
        });
        // The example environment file: set and commented-out variables alike must be real.
        for line in read(&example).lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some((var, _)) = line.split_once('=')
                && var.starts_with("HERALD_")
                && !var.contains(' ')
            {
                assert!(
                    known.contains(var),
                    "{}: {var} is not read by {binary}",
                    example.display()
                );
            }
        }
    }
}
