//! From a pod spec to CRI's configurations, field by field as kubelet translates them
//! (pkg/kubelet/kuberuntime): namespaces, security contexts, resources, environment, mounts.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde_json::Value;

use super::{ApiObjects, KubeletError, PodMeta, Result};
use crate::cri::api::{
    security_profile::ProfileType, Capability, ContainerMetadata, ImageSpec, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, MountPropagation, NamespaceMode, NamespaceOption, SecurityProfile,
};
use crate::cri::{ContainerConfig, PodSandboxConfig, PodSandboxMetadata};

/// What the downward API can put in a container's environment.
#[derive(Debug)]
pub(super) struct Downward<'a> {
    pub meta: &'a PodMeta,
    pub labels: &'a HashMap<String, String>,
    pub annotations: &'a HashMap<String, String>,
    pub node_name: &'a str,
    pub node_ip: Ipv4Addr,
    /// None until the sandbox has an address (a host-network pod has the node's at once).
    pub pod_ip: Option<Ipv4Addr>,
    pub service_account: &'a str,
}

/// The sandbox of pod `meta` from `template` (metadata and spec), in the pod's own cgroup under
/// `cgroup_parent`, its logs in /var/log/pods/NAMESPACE_NAME_UID as kubelet keeps them.
pub(super) fn sandbox_config(meta: &PodMeta, template: &Value, cgroup_parent: &str) -> Result<PodSandboxConfig> {
    let spec = &template["spec"];
    let mut labels = string_map(&template["metadata"]["labels"]);
    labels.insert("io.kubernetes.pod.name".into(), meta.name.clone());
    labels.insert("io.kubernetes.pod.namespace".into(), meta.namespace.clone());
    labels.insert("io.kubernetes.pod.uid".into(), meta.uid.clone());
    let privileged = containers(spec).any(|c| c["securityContext"]["privileged"] == true);
    let host_network = spec["hostNetwork"] == true;
    Ok(PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: meta.name.clone(),
            uid: meta.uid.clone(),
            namespace: meta.namespace.clone(),
            attempt: 0,
        }),
        // kubelet leaves a host-network pod's hostname to the node's.
        hostname: if host_network { String::new() } else { meta.name.clone() },
        log_directory: format!("/var/log/pods/{}_{}_{}", meta.namespace, meta.name, meta.uid),
        labels,
        annotations: string_map(&template["metadata"]["annotations"]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("{cgroup_parent}/pod{}", meta.uid),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(spec)),
                privileged,
                seccomp: Some(seccomp(&spec["securityContext"])?),
            }),
            sysctls: spec["securityContext"]["sysctls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| (s["name"].as_str().unwrap_or("").into(), s["value"].as_str().unwrap_or("").into()))
                .collect(),
        }),
        ..Default::default()
    })
}

/// CRI's configuration for `container` of pod `spec`, its image resolved to `image_id`.
pub(super) fn container_config(
    spec: &Value,
    container: &Value,
    image_id: &str,
    volumes: &BTreeMap<String, (PathBuf, bool)>,
    objects: &ApiObjects,
    fields: &Downward,
) -> Result<ContainerConfig> {
    let name = container["name"].as_str().ok_or_else(|| KubeletError::Invalid("a container has no name".into()))?;
    let env = environment(container, objects, fields)?;
    let lookup: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let strings = |key: &str| -> Vec<String> {
        container[key].as_array().into_iter().flatten().filter_map(Value::as_str).map(|s| expand(s, &lookup)).collect()
    };
    let security = &container["securityContext"];
    let privileged = security["privileged"] == true;
    let mut mounts = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = m["name"].as_str().unwrap_or_default();
        let (host_path, forced_read_only) = volumes
            .get(volume)
            .ok_or_else(|| KubeletError::Invalid(format!("{name} mounts an undefined volume {volume}")))?;
        if m.get("subPath").is_some() || m.get("subPathExpr").is_some() {
            return Err(KubeletError::Unsupported(format!("{name}: subPath")));
        }
        let propagation = match m["mountPropagation"].as_str().unwrap_or("None") {
            "None" => MountPropagation::PropagationPrivate,
            "HostToContainer" => MountPropagation::PropagationHostToContainer,
            "Bidirectional" if privileged => MountPropagation::PropagationBidirectional,
            "Bidirectional" => {
                return Err(KubeletError::Invalid(format!("{name}: Bidirectional propagation needs privileged")))
            }
            other => return Err(KubeletError::Invalid(format!("{name}: mountPropagation {other}"))),
        };
        mounts.push(Mount {
            container_path: m["mountPath"].as_str().unwrap_or_default().into(),
            host_path: host_path.to_string_lossy().into(),
            readonly: m["readOnly"] == true || *forced_read_only,
            selinux_relabel: false,
            propagation: propagation as i32,
        });
    }
    let pod_security = &spec["securityContext"];
    let id =
        |key: &str| security[key].as_i64().or_else(|| pod_security[key].as_i64()).map(|value| Int64Value { value });
    let capabilities = Capability {
        add_capabilities: string_list(&security["capabilities"]["add"]),
        drop_capabilities: string_list(&security["capabilities"]["drop"]),
    };
    let mut labels: HashMap<String, String> = HashMap::new();
    labels.insert("io.kubernetes.container.name".into(), name.into());
    labels.insert("io.kubernetes.pod.name".into(), fields.meta.name.clone());
    labels.insert("io.kubernetes.pod.namespace".into(), fields.meta.namespace.clone());
    labels.insert("io.kubernetes.pod.uid".into(), fields.meta.uid.clone());
    Ok(ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image_id.into(), ..Default::default() }),
        command: strings("command"),
        args: strings("args"),
        working_dir: container["workingDir"].as_str().unwrap_or_default().into(),
        envs: env.into_iter().map(|(key, value)| KeyValue { key, value }).collect(),
        mounts,
        labels,
        annotations: [("io.kubernetes.container.restartCount".to_string(), "0".to_string())].into(),
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(resources(spec, container)?),
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(capabilities),
                privileged,
                namespace_options: Some(namespaces(spec)),
                run_as_user: id("runAsUser"),
                run_as_group: id("runAsGroup"),
                readonly_rootfs: security["readOnlyRootFilesystem"] == true,
                // kubelet sets no_new_privs only when privilege escalation is refused.
                no_new_privs: security["allowPrivilegeEscalation"] == false,
                seccomp: Some(seccomp(if security.get("seccompProfile").is_some() { security } else { pod_security })?),
            }),
        }),
    })
}

/// The init containers and the containers.
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    spec["initContainers"].as_array().into_iter().flatten().chain(spec["containers"].as_array().into_iter().flatten())
}

fn namespaces(spec: &Value) -> NamespaceOption {
    let host = |key: &str| spec[key] == true;
    NamespaceOption {
        network: if host("hostNetwork") { NamespaceMode::Node } else { NamespaceMode::Pod } as i32,
        pid: if host("hostPID") {
            NamespaceMode::Node
        } else if host("shareProcessNamespace") {
            NamespaceMode::Pod
        } else {
            NamespaceMode::Container
        } as i32,
        ipc: if host("hostIPC") { NamespaceMode::Node } else { NamespaceMode::Pod } as i32,
        target_id: String::new(),
    }
}

/// kubelet's default is Unconfined (without the SeccompDefault feature).
fn seccomp(security: &Value) -> Result<SecurityProfile> {
    let profile_type = match security["seccompProfile"]["type"].as_str() {
        None | Some("Unconfined") => ProfileType::Unconfined,
        Some("RuntimeDefault") => ProfileType::RuntimeDefault,
        Some(other) => return Err(KubeletError::Unsupported(format!("seccompProfile {other}"))),
    };
    Ok(SecurityProfile { profile_type: profile_type as i32, localhost_ref: String::new() })
}

/// CPU shares from the request (limit if only that), the CFS quota from the CPU limit, the
/// memory limit, and the OOM score adjustment of the pod's QoS class.
fn resources(spec: &Value, container: &Value) -> Result<LinuxContainerResources> {
    let r = &container["resources"];
    let get = |kind: &str, what: &str, milli: bool| -> Result<Option<i64>> {
        r[kind][what].as_str().map(|q| quantity(q, milli)).transpose().map_err(KubeletError::Invalid)
    };
    let (cpu_limit, memory_limit) = (get("limits", "cpu", true)?, get("limits", "memory", false)?);
    let cpu_request = get("requests", "cpu", true)?.or(cpu_limit);
    let memory_request = get("requests", "memory", false)?.or(memory_limit);
    const PERIOD: i64 = 100_000;
    let critical = spec["priorityClassName"] == "system-node-critical";
    let guaranteed =
        cpu_limit.is_some() && memory_limit.is_some() && cpu_request == cpu_limit && memory_request == memory_limit;
    let oom_score_adj = if critical || guaranteed {
        -997
    } else if cpu_request.is_none() && memory_request.is_none() {
        1000
    } else {
        // Burstable: the larger the share of the node's memory requested, the lower the score.
        let total = node_memory_bytes().max(1);
        (1000 - 1000 * memory_request.unwrap_or(0) / total).clamp(2, 999)
    };
    Ok(LinuxContainerResources {
        cpu_period: if cpu_limit.is_some() { PERIOD } else { 0 },
        cpu_quota: cpu_limit.map_or(0, |m| m * PERIOD / 1000),
        cpu_shares: cpu_request.map_or(2, |m| (m * 1024 / 1000).max(2)),
        memory_limit_in_bytes: memory_limit.unwrap_or(0),
        oom_score_adj,
    })
}

fn node_memory_bytes() -> i64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok());
    kib.unwrap_or(0i64) * 1024
}

/// A Kubernetes quantity: in thousandths when `milli` (CPU: "500m" is 500, "1" 1000), else in
/// units (memory: "64Mi" is 67108864).
pub fn quantity(q: &str, milli: bool) -> std::result::Result<i64, String> {
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("quantity {q:?}"))?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        _ => return Err(format!("quantity {q:?}: suffix {suffix:?}")),
    };
    let units = value * factor * if milli { 1000.0 } else { 1.0 };
    Ok(units.ceil() as i64)
}

/// A file mode as the API reads it: a number, or (YAML 1.1, which Kubernetes' YAML reader
/// follows) digits with a leading zero, which are octal; serde_yaml (YAML 1.2) leaves those as
/// a string ("0400").
pub fn file_mode(v: &Value) -> std::result::Result<u32, String> {
    let mode = match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => {
            let octal = s.strip_prefix("0o").or_else(|| s.strip_prefix('0'));
            octal.and_then(|digits| u32::from_str_radix(digits, 8).ok())
        }
        _ => None,
    };
    mode.filter(|m| *m <= 0o777).ok_or_else(|| format!("{v} is not a file mode"))
}

/// `$(NAME)` replaced by NAME's value from `env` where it has one, `$$` by `$`, everything else
/// kept as written (Kubernetes' expansion of command, args and env values).
pub fn expand(s: &str, env: &HashMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out + rest
}

/// The container's environment in order: `value` (expanded from the variables before it),
/// `valueFrom` a field of the pod (the downward API), a ConfigMap or Secret key.
fn environment(container: &Value, objects: &ApiObjects, fields: &Downward) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    if container.get("envFrom").is_some() {
        return Err(KubeletError::Unsupported("envFrom".into()));
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(v) = var["value"].as_str() {
            let known: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            expand(v, &known)
        } else if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            field(path, fields)?
        } else if let Some(key) = var["valueFrom"].get("configMapKeyRef") {
            let object = objects.config_maps.get(key["name"].as_str().unwrap_or_default());
            let value = object.and_then(|o| o.get(key["key"].as_str().unwrap_or_default())).cloned();
            value.ok_or_else(|| KubeletError::Invalid(format!("env {name}: {key}")))?
        } else if let Some(key) = var["valueFrom"].get("secretKeyRef") {
            let object = objects.secrets.get(key["name"].as_str().unwrap_or_default());
            let value = object.and_then(|o| o.get(key["key"].as_str().unwrap_or_default()));
            String::from_utf8_lossy(value.ok_or_else(|| KubeletError::Invalid(format!("env {name}: {key}")))?).into()
        } else {
            return Err(KubeletError::Unsupported(format!("env {name}: {var}")));
        };
        env.push((name, value));
    }
    Ok(env)
}

/// A downward-API field as kubelet fills it.
fn field(path: &str, f: &Downward) -> Result<String> {
    let indexed = |prefix: &str, map: &HashMap<String, String>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.get(key).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => f.meta.name.clone(),
        "metadata.namespace" => f.meta.namespace.clone(),
        "metadata.uid" => f.meta.uid.clone(),
        "spec.nodeName" => f.node_name.into(),
        "spec.serviceAccountName" => f.service_account.into(),
        "status.hostIP" | "status.hostIPs" => f.node_ip.to_string(),
        "status.podIP" | "status.podIPs" => f.pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        _ => indexed("metadata.labels['", f.labels)
            .or_else(|| indexed("metadata.annotations['", f.annotations))
            .ok_or_else(|| KubeletError::Unsupported(format!("fieldRef {path}")))?,
    };
    Ok(value)
}

/// Directories to make inside atomic-writer volume `volume` because another volume is mounted
/// beneath its mount path in the same container (relative to the volume).
pub(super) fn nested_mount_points(spec: &Value, volume: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for c in containers(spec) {
        let mounts: Vec<&Value> = c["volumeMounts"].as_array().into_iter().flatten().collect();
        for parent in mounts.iter().filter(|m| m["name"] == volume) {
            let base = PathBuf::from(parent["mountPath"].as_str().unwrap_or_default());
            for m in &mounts {
                let path = PathBuf::from(m["mountPath"].as_str().unwrap_or_default());
                if let Ok(rel) = path.strip_prefix(&base) {
                    if !rel.as_os_str().is_empty() {
                        dirs.push(rel.to_path_buf());
                    }
                }
            }
        }
    }
    dirs
}

fn string_map(v: &Value) -> HashMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), String::from)))
        .collect()
}

fn string_list(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let env: HashMap<&str, &str> = [("NODE_NAME", "node3"), ("A", "x")].into();
        assert_eq!(expand("$(NODE_NAME)", &env), "node3");
        assert_eq!(expand("--node-name=$(NODE_NAME).$(A)", &env), "--node-name=node3.x");
        assert_eq!(expand("$(MISSING) $$(A) $$ $", &env), "$(MISSING) $(A) $ $");
        assert_eq!(expand("$(unclosed", &env), "$(unclosed");
    }

    #[test]
    fn quantities_and_modes_as_the_api_reads_them() {
        assert_eq!(quantity("500m", true), Ok(500));
        assert_eq!(quantity("2", true), Ok(2000));
        assert_eq!(quantity("64Mi", false), Ok(64 << 20));
        assert_eq!(quantity("1G", false), Ok(1_000_000_000));
        assert!(quantity("12x", false).is_err());
        assert_eq!(file_mode(&Value::from("0400")), Ok(0o400));
        assert_eq!(file_mode(&Value::from(256)), Ok(0o400));
        assert_eq!(file_mode(&Value::from("0o644")), Ok(0o644));
        assert!(file_mode(&Value::from("0999")).is_err());
    }

    #[test]
    fn a_privileged_host_network_pod_gets_node_network_and_a_privileged_sandbox() {
        let template: Value = serde_json::json!({
            "metadata": {"labels": {"app": "x"}},
            "spec": {"hostNetwork": true, "containers": [{"name": "c", "securityContext": {"privileged": true}}]}
        });
        let meta = PodMeta { name: "x-1".into(), namespace: "kube-system".into(), uid: "u1".into() };
        let config = sandbox_config(&meta, &template, "/test").unwrap();
        let security = config.linux.as_ref().unwrap().security_context.as_ref().unwrap();
        assert!(security.privileged);
        assert_eq!(security.namespace_options.as_ref().unwrap().network, NamespaceMode::Node as i32);
        assert_eq!(security.namespace_options.as_ref().unwrap().pid, NamespaceMode::Container as i32);
        assert_eq!(config.log_directory, "/var/log/pods/kube-system_x-1_u1");
        assert_eq!(config.hostname, "");
        assert_eq!(config.labels["io.kubernetes.pod.uid"], "u1");
    }
}
