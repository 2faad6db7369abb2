//! [`Lab::up`]: the fabric and its VPC mode (the L2 bridge, the UCloud API's SDN or EC2's), the
//! gateway and hybrid network, the VM, etcd, the nodes with vswitchd, the pods through vpc-cni,
//! the Service, the VPC's own rows' pods and balancer, and a server everywhere.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::*;

impl Lab {
    /// Builds the lab; `progress` is told about each step.
    pub fn up(spec: LabSpec, mut progress: impl FnMut(&str)) -> Lab {
        assert!((2..=4).contains(&spec.nodes), "the lab has 2 to 4 nodes, not {}", spec.nodes);
        assert!((1..=26).contains(&spec.pods_per_node), "1 to 26 pods per node, not {}", spec.pods_per_node);
        // (`--vpc ucloud` with another IPAM is for tests of the SDN: its pods are unregistered.)
        assert!(spec.ipam != IpamMode::Vpc || spec.vpc != VpcMode::L2, "the VPC's IPAM needs --vpc ucloud or aws");
        assert!(
            spec.vpc != VpcMode::Aws || (spec.ipam == IpamMode::Vpc && spec.mode == UplinkMode::HostRouted),
            "--vpc aws is host-routed with --ipam vpc"
        );
        assert!(spec.ipam != IpamMode::Vpc || spec.family == IpFamily::Ipv4, "provider mode is IPv4 only");
        let v6 = spec.family.has_v6();
        let name = unique("vl");
        let dir = TempDir::new();
        progress("fabric: a bridge for the VPC subnet 10.10.0.0/16");
        let fabric = Netns::new(&format!("{name}f"));
        fabric.ip(&["link", "add", "br0", "type", "bridge"]);
        fabric.ip(&["link", "set", "br0", "up"]);
        let (mut vpc_api, mut vpc, mut ec2_vpc, mut ec2) = (None, None, None, None);
        match spec.vpc {
            VpcMode::L2 => {}
            VpcMode::Ucloud => {
                let (api, info) = ucloud::start(&name, &fabric, &spec, &dir.0.join("vpc"));
                progress(&format!(
                    "SDN on the fabric (nftables, bridge family): frames pass only between addresses registered to \
                     their ports; the VPC API in UCloud's dialect at {} (VPC {}, subnet {}, flow-table push {} ms)",
                    api.endpoint, info.vpc_id, info.subnet_id, api.config.faults.push_delay_ms
                ));
                (vpc_api, vpc) = (Some(api), Some(info));
            }
            VpcMode::Aws => {
                let (running, info) = aws::start(&name, &fabric, spec.nodes, &dir.0.join("vpc"));
                progress(&format!(
                    "EC2 (moto behind the lab's proxy) at {} (VPC {}, subnet {} = 10.10.0.0/16, one {} instance per \
                     node, the VM and etcd as instances); SDN on the fabric programmed from EC2's \
                     DescribeNetworkInterfaces every {} ms, applied {} ms after",
                    info.endpoint,
                    info.vpc_id,
                    info.subnet_id,
                    info.instance_type,
                    aws::POLL_MS,
                    aws::PUSH_DELAY_MS
                ));
                (ec2_vpc, ec2) = (Some(running), Some(info));
            }
        }

        progress("VPC gateway, and the hybrid-cloud network behind it (link MTU 1400)");
        let gateway = Netns::new(&format!("{name}g"));
        attach(&fabric, &gateway, "eth0", "fgw", "10.10.0.1/16");
        let hybrid = Netns::new(&format!("{name}h"));
        veth(&gateway, "eth1", &hybrid, "eth0");
        let hybrid_mtu = spec.hybrid_mtu.to_string();
        gateway.ip(&["addr", "add", "172.16.50.1/24", "dev", "eth1"]);
        gateway.ip(&["link", "set", "eth1", "mtu", &hybrid_mtu, "up"]);
        hybrid.ip(&["addr", "add", "172.16.50.10/24", "dev", "eth0"]);
        hybrid.ip(&["link", "set", "eth0", "mtu", &hybrid_mtu, "up"]);
        hybrid.ip(&["route", "add", "default", "via", "172.16.50.1"]);
        sh(&gateway, "echo 1 > /proc/sys/net/ipv4/ip_forward");
        if v6 {
            progress(&format!(
                "IPv6: the VPC subnet {VPC_SUBNET6} (gateway {GATEWAY_IP6}), the hybrid network fd00:172:16:50::/64 on the same link"
            ));
            add6(&gateway, "eth0", GATEWAY_IP6);
            add6(&gateway, "eth1", HYBRID_GATEWAY_IP6);
            add6(&hybrid, "eth0", HYBRID_IP6);
            hybrid.ip(&["-6", "route", "add", "default", "via", &HYBRID_GATEWAY_IP6.to_string()]);
            sh(&gateway, "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
        }

        progress("a VM on the VPC subnet (10.10.0.50)");
        let vm = Netns::new(&format!("{name}v"));
        attach(&fabric, &vm, "eth0", "fvm", "10.10.0.50/16");
        set_ec2_mac(ec2.as_ref(), &vm, "vm");
        vm.ip(&["route", "add", "default", "via", "10.10.0.1"]);
        if v6 {
            add6(&vm, "eth0", VM_IP6);
            vm.ip(&["-6", "route", "add", "default", "via", &GATEWAY_IP6.to_string()]);
        }

        let topology = Topology {
            name: name.clone(),
            mode: spec.mode,
            ipam: spec.ipam,
            family: spec.family,
            pod_mtu: spec.pod_mtu,
            hybrid_mtu: spec.hybrid_mtu,
            nodes: Vec::new(),
            sockets: Vec::new(),
            dir: dir.0.clone(),
            pods: Vec::new(),
            vm: vm.name.clone(),
            hybrid: hybrid.name.clone(),
            vpc,
            ec2,
            unregistered: None,
            load_balancer: None,
        };
        let mut lab = Lab {
            topology,
            spec: spec.clone(),
            servers: Vec::new(),
            daemons: Vec::new(),
            etcd: None,
            nodes: Vec::new(),
            pod_ns: Vec::new(),
            etcd_ns: Vec::new(),
            vpc_api,
            ec2_vpc,
            lb_ns: None,
            vm,
            hybrid,
            gateway,
            fabric,
            dir,
        };
        if spec.ipam != IpamMode::Local {
            progress(&format!(
                "etcd: 3 members, each in its own namespace on the fabric ({}-{}), TLS with client certificates",
                ETCD_IPS[0], ETCD_IPS[2]
            ));
            lab.start_etcd();
        }
        for i in 0..spec.nodes {
            progress(&format!(
                "node{} ({}): vswitchd, {}{}",
                i + 1,
                node_ip(i),
                match spec.mode {
                    UplinkMode::HostRouted => "host-routed",
                    UplinkMode::Uplink => "with a dedicated uplink NIC",
                },
                match (spec.ipam, spec.family) {
                    (IpamMode::Local, IpFamily::Ipv4) => format!(", pods from its own range 10.10.{}.10-250", i + 1),
                    (IpamMode::Local, IpFamily::Dual) => format!(
                        ", {}: pods from its own ranges 10.10.{}.10-250 and {}-{}",
                        node_ip6(i),
                        i + 1,
                        pod_range6(i).0,
                        pod_range6(i).1
                    ),
                    (IpamMode::Local, IpFamily::Ipv6) => format!(
                        ", {}: pods (IPv6 only) from its own range {}-{}",
                        node_ip6(i),
                        pod_range6(i).0,
                        pod_range6(i).1
                    ),
                    (IpamMode::Etcd, family) =>
                        format!(", pods from the cluster pool {} (in etcd)", pools(family).join(" and ")),
                    (IpamMode::Vpc, _) if spec.vpc == VpcMode::Aws => format!(
                        ", instance {}: pods get secondary private IPs of its ENIs from EC2 (provider \"aws\", \
                         IPv4 only; eth0 has its primary ENI's MAC)",
                        lab.topology
                            .ec2
                            .as_ref()
                            .and_then(|e| e.host(&format!("node{}", i + 1)).instance.clone())
                            .unwrap_or_default()
                    ),
                    (IpamMode::Vpc, _) => format!(
                        ", pods get secondary IPs of its NIC {} from the VPC API (provider mode, IPv4 only)",
                        node_config::pod_nic(spec.mode)
                    ),
                }
            ));
            lab.add_node(i);
        }
        for i in 0..spec.nodes {
            for p in 0..spec.pods_per_node {
                let pod = lab.add_pod(i, &pod_name(i, p));
                progress(&format!("pod {} on node{}: {} (through vpc-cni ADD)", pod.name, i + 1, pod.addresses()));
            }
        }
        if spec.ipam != IpamMode::Local {
            let pod = lab.add_pod(0, STICKY_POD);
            progress(&format!(
                "sticky pod {POD_NAMESPACE}/{STICKY_POD} on node1: {} (keeps its address on any node)",
                pod.addresses()
            ));
        }
        progress(&if v6 {
            format!(
                "dual-stack ClusterIP Service {SERVICE_IP}:80 and [{SERVICE_IP6}]:80, NodePort {NODE_PORT} on both \
                 families, as kube-proxy's iptables and ip6tables DNAT rules on every node"
            )
        } else {
            format!(
                "ClusterIP Service {SERVICE_IP}:80 and NodePort {NODE_PORT} as kube-proxy's DNAT rules on every node"
            )
        });
        if spec.ipam == IpamMode::Vpc {
            let pod = lab.add_unregistered_pod(0);
            progress(&format!(
                "pod {} on node1: {} configured by hand (a static address in its network config), never registered \
                 with the VPC",
                pod.name,
                pod.addresses()
            ));
        }
        lab.add_service();
        if spec.ipam == IpamMode::Vpc {
            let lb = lab.add_load_balancer();
            progress(&format!(
                "a load balancer on the VPC ({}:{}, {} in NAT mode, standing in for {}): the Service's pods \
                 {} as real servers, no NodePort hop",
                lb.vip,
                load_balancer::VIP_PORT,
                lb.kind,
                match spec.vpc {
                    VpcMode::Aws => "an NLB with IP targets and client IP preservation, its ENI in EC2",
                    _ => "UCloud's ULB",
                },
                lb.backends.join(", ")
            ));
        }
        progress("servers that report their peer's address, in every pod, node, the VM and the hybrid host");
        lab.start_servers();
        lab
    }

    /// Three etcd members, each in a namespace of its own on the fabric.
    fn start_etcd(&mut self) {
        let mut placement = Vec::new();
        for (i, ip) in ETCD_IPS.iter().enumerate() {
            let ns = Netns::new(&format!("{}e{}", self.name, i + 1));
            attach(&self.fabric, &ns, "eth0", &format!("fe{}", i + 1), &format!("{ip}/16"));
            set_ec2_mac(self.topology.ec2.as_ref(), &ns, &format!("etcd{}", i + 1));
            placement.push((ns.name.clone(), *ip));
            self.etcd_ns.push(ns);
        }
        self.etcd = Some(if self.spec.detachable {
            EtcdCluster::start_in_detached(&placement)
        } else {
            EtcdCluster::start_in(&placement)
        });
    }

    fn add_node(&mut self, i: usize) {
        let ns = Netns::new(&format!("{}n{}", self.name, i + 1));
        let ip = node_ip(i);
        attach(&self.fabric, &ns, "eth0", &format!("fn{}", i + 1), &format!("{ip}/16"));
        if self.spec.vpc == VpcMode::Ucloud {
            // The MAC the VPC API knows this NIC by.
            ns.ip(&["link", "set", "eth0", "address", &ucloud::nic_mac(i)]);
        }
        set_ec2_mac(self.topology.ec2.as_ref(), &ns, &format!("node{}", i + 1));
        ns.ip(&["route", "add", "default", "via", "10.10.0.1"]);
        sh(&ns, "echo 1 > /proc/sys/net/ipv4/ip_forward");
        let v6 = self.spec.family.has_v6();
        let ip6 = node_ip6(i);
        if v6 {
            add6(&ns, "eth0", ip6);
            ns.ip(&["-6", "route", "add", "default", "via", &GATEWAY_IP6.to_string()]);
            // The node routes its pods' IPv6 (host-routed: between vsw0 and eth0).
            sh(&ns, "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
        }
        match self.spec.mode {
            UplinkMode::HostRouted => {
                // The node answers ARP on the VPC subnet for its pods (it routes them via vsw0),
                // at once rather than after the default random proxy delay of up to 0.8 s.
                sh(&ns, "echo 1 > /proc/sys/net/ipv4/conf/eth0/proxy_arp && echo 0 > /proc/sys/net/ipv4/neigh/eth0/proxy_delay");
                if v6 {
                    // IPv6 has no proxy-everything: the node answers neighbour solicitations on
                    // eth0 only for the addresses in its proxy list, which vswitchd fills with
                    // its pods' IPv6 addresses when it has a NIC to announce them on.
                    sh(&ns, "echo 1 > /proc/sys/net/ipv6/conf/eth0/proxy_ndp && echo 0 > /proc/sys/net/ipv6/neigh/eth0/proxy_delay");
                }
            }
            UplinkMode::Uplink => {
                veth(&ns, "up0", &self.fabric, &format!("fu{}", i + 1));
                if self.spec.vpc == VpcMode::Ucloud {
                    ns.ip(&["link", "set", "up0", "address", &ucloud::uplink_mac(i)]);
                }
                self.fabric.ip(&["link", "set", &format!("fu{}", i + 1), "master", "br0", "up"]);
            }
        }
        let config = node_config::vswitchd_toml(
            &self.spec,
            i,
            self.etcd.as_ref(),
            self.topology.vpc.as_ref(),
            self.topology.ec2.as_ref(),
        );
        let env = self.topology.ec2.as_ref().map(aws::vswitchd_env).unwrap_or_default();
        let daemon = Daemon::start_with_config_env(
            &Binaries::beside_current_exe(),
            &ns,
            &self.dir.0.join(format!("node{}", i + 1)),
            self.spec.workers,
            &config,
            &env,
        );
        self.topology.sockets.push(daemon.socket.clone());
        self.daemons.push(daemon);
        self.topology.nodes.push(ns.name.clone());
        self.nodes.push(ns);
    }

    /// The Service on every node, in each family the pods have (a dual-stack Service: one
    /// ClusterIP per family, the NodePort on the node's addresses of both).
    fn add_service(&self) {
        for family in self.spec.family.families() {
            self.add_service_family(family);
        }
    }

    fn add_service_family(&self, family: Family) {
        let backends = self.topology.backends();
        let (tables, cluster_ip, backend): (&str, String, fn(&LabPod) -> String) = match family {
            Family::V4 => ("iptables", format!("{SERVICE_IP}/32"), |p: &LabPod| format!("{}:{SERVER_PORT}", p.ip4())),
            Family::V6 => ("ip6tables", format!("{SERVICE_IP6}/128"), |p: &LabPod| {
                format!("[{}]:{SERVER_PORT}", p.ipv6.expect("an IPv6 backend"))
            }),
        };
        for (i, node) in self.nodes.iter().enumerate() {
            let mut rules = vec![format!("{tables} -t nat -N KUBE-SVC-LAB")];
            rules.push(format!("{tables} -t nat -A PREROUTING -d {cluster_ip} -p tcp --dport 80 -j KUBE-SVC-LAB"));
            // The NodePort: kube-proxy sends what comes to any of the node's own addresses on the
            // port to the same Service chain (its KUBE-NODEPORTS, last in KUBE-SERVICES).
            rules.push(format!("{tables} -t nat -N KUBE-NODEPORTS"));
            rules.push(format!("{tables} -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"));
            rules.push(format!("{tables} -t nat -A KUBE-NODEPORTS -p tcp --dport {NODE_PORT} -j KUBE-SVC-LAB"));
            for (k, b) in backends.iter().enumerate() {
                let remaining = backends.len() - k;
                let pick = if remaining > 1 {
                    format!("-m statistic --mode random --probability {:.5} ", 1.0 / remaining as f64)
                } else {
                    String::new()
                };
                rules.push(format!(
                    "{tables} -t nat -A KUBE-SVC-LAB {pick}-p tcp -j DNAT --to-destination {}",
                    backend(b)
                ));
            }
            // A backend's reply must come back through this node's conntrack to be un-DNATed,
            // but the switch forwards pod to pod (and, with an uplink, node to node) directly,
            // and a backend on another node answers a NodePort client straight through the VPC:
            // so Service traffic leaves with the node's address, as kube-proxy masquerades
            // (for a NodePort, externalTrafficPolicy: Cluster; Local would keep the client's
            // address but serve only from this node's own backends).
            let node_addr = match family {
                Family::V4 => IpAddr::V4(node_ip(i)),
                Family::V6 => IpAddr::V6(node_ip6(i)),
            };
            rules.push(format!(
                "{tables} -t nat -A POSTROUTING -m conntrack --ctstate DNAT -j SNAT --to-source {node_addr}"
            ));
            sh(node, &rules.join(" && "));
        }
    }

    fn start_servers(&mut self) {
        let mut targets: Vec<(String, String)> =
            self.topology.pods.iter().map(|p| (p.netns.clone(), p.name.clone())).collect();
        targets.extend(self.nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), format!("node{}", i + 1))));
        targets.push((self.vm.name.clone(), "vm".into()));
        targets.push((self.hybrid.name.clone(), "hybrid".into()));
        for (ns, name) in targets {
            self.servers.push(start_server(&ns, &name));
        }
        // Wait until every server listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        for pod in self.topology.pods.clone() {
            let family = self.spec.family.families()[0];
            let ip = pod.addr(family).expect("the pod's address of its first family");
            while self.probe(&pod.netns, ip, SERVER_PORT).is_err() {
                assert!(Instant::now() < deadline, "server in {} did not start", pod.name);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
