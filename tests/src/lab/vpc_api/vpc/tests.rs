//! The VPC model's rules: the pool running out (57000) and freed on delete, one owner per
//! address, the secondary quota and a move, scope and parameter checks.

use super::*;

const MAC1: &str = "52:54:00:00:00:01";
const MAC2: &str = "52:54:00:00:00:02";

fn vpc(quota: usize) -> Vpc {
    let nic = |mac: &str, n: u8| NicConfig {
        mac: mac.into(),
        object_id: format!("uhost-{n}"),
        interface_id: Some(format!("uni-{n}")),
        subnet_id: "subnet-t".into(),
        port: format!("p{n}"),
        primary: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + n))],
    };
    // The clients' small VPC (one subnet, two free secondary IPs), with IPv6, this test's
    // NICs and a VM.
    let mut config = crate::lab::vpc_api::local::small_vpc(&[]);
    config.subnets[0].ipv6_cidr = Some("fd00::/64".into());
    config.nics = vec![nic(MAC1, 1), nic(MAC2, 2)];
    config.fixed_hosts =
        vec![FixedHost { name: "vm".into(), port: "pvm".into(), addresses: vec!["10.0.0.50".parse().unwrap()] }];
    config.credentials = vec![];
    config.secondary_quota = quota;
    Vpc::new(config).unwrap()
}

fn params(pairs: &[(&str, &str)]) -> Params {
    let mut p: Params =
        [("Region", "cn-lab"), ("Zone", "cn-lab-01"), ("ProjectId", "org-lab"), ("SubnetId", "subnet-t")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
    p.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    p
}

fn call(vpc: &mut Vpc, action: &str, pairs: &[(&str, &str)]) -> Result<(Value, Vec<FlowChange>), ApiError> {
    vpc.call(action, &params(pairs)).expect("a served action")
}

fn allocate(vpc: &mut Vpc, mac: &str, ip: Option<&str>) -> Result<String, RetCode> {
    let object = if mac == MAC1 { "uhost-1" } else { "uni-2" };
    let mut pairs = vec![("Mac", mac), ("ObjectId", object)];
    pairs.extend(ip.map(|ip| ("Ip", ip)));
    call(vpc, "AllocateSecondaryIp", &pairs)
        .map(|(v, _)| v["IpInfo"]["Ip"].as_str().unwrap().to_string())
        .map_err(|e| e.code)
}

#[test]
fn the_pool_runs_out_with_57000_and_frees_on_delete() {
    let mut vpc = vpc(10);
    // A /30 pool: two host addresses, 10.0.0.101 and .102.
    assert_eq!(allocate(&mut vpc, MAC1, None), Ok("10.0.0.101".into()));
    assert_eq!(allocate(&mut vpc, MAC2, None), Ok("10.0.0.102".into()));
    assert_eq!(allocate(&mut vpc, MAC1, None), Err(RetCode::SubnetFull));
    let (subnet, _) = call(&mut vpc, "DescribeSubnet", &[]).unwrap();
    assert_eq!(subnet["DataSet"][0]["AvailableIPs"], 0);
    let deleted = call(&mut vpc, "DeleteSecondaryIp", &[("Ip", "10.0.0.101"), ("Mac", MAC1)]).unwrap();
    assert_eq!(
        deleted.1,
        vec![FlowChange::Remove(FlowEntry { port: "p1".into(), addr: "10.0.0.101".parse().unwrap() })]
    );
    let gone = call(&mut vpc, "DeleteSecondaryIp", &[("Ip", "10.0.0.101"), ("Mac", MAC1)]).unwrap_err();
    assert_eq!(gone.code, RetCode::IpNotFound);
    assert_eq!(allocate(&mut vpc, MAC1, None), Ok("10.0.0.101".into()));
}

#[test]
fn an_address_has_one_owner() {
    let mut vpc = vpc(10);
    assert_eq!(allocate(&mut vpc, MAC1, Some("10.0.0.200")), Ok("10.0.0.200".into()));
    for taken in ["10.0.0.200", "10.0.0.50", "10.0.0.12", "10.0.0.1"] {
        assert_eq!(allocate(&mut vpc, MAC2, Some(taken)), Err(RetCode::IpInUse), "{taken}");
    }
    assert_eq!(allocate(&mut vpc, MAC2, Some("10.0.1.5")), Err(RetCode::BadParams));
    assert_eq!(allocate(&mut vpc, MAC2, Some("fd00::64:1")), Ok("fd00::64:1".into()));
    // Another NIC cannot delete it: 58221, as for an address already gone.
    let err = call(&mut vpc, "DeleteSecondaryIp", &[("Ip", "10.0.0.200"), ("Mac", MAC2)]).unwrap_err();
    assert_eq!(err.code, RetCode::IpNotFound);
}

#[test]
fn the_quota_and_a_move() {
    let mut vpc = vpc(1);
    assert_eq!(allocate(&mut vpc, MAC1, Some("10.0.0.200")), Ok("10.0.0.200".into()));
    assert_eq!(allocate(&mut vpc, MAC1, Some("10.0.0.201")), Err(RetCode::QuotaExceeded));
    let mv = [("Ip", "10.0.0.200"), ("OldMac", MAC1), ("NewMac", &MAC2.to_uppercase())];
    let (_, changes) = call(&mut vpc, "MoveSecondaryIPMac", &mv).unwrap();
    let entry = |port: &str| FlowEntry { port: port.into(), addr: "10.0.0.200".parse().unwrap() };
    assert_eq!(changes, vec![FlowChange::Remove(entry("p1")), FlowChange::Add(entry("p2"))]);
    let (described, _) = call(&mut vpc, "DescribeSecondaryIp", &[("VPCId", "uvnet-t"), ("Ip", "10.0.0.200")]).unwrap();
    assert_eq!(described["DataSet"][0]["Mac"], MAC2);
    assert_eq!(described["DataSet"][0]["Mask"], "255.255.255.0");
    // Moved away: the old NIC no longer has it, the new one is full.
    assert_eq!(call(&mut vpc, "MoveSecondaryIPMac", &mv).unwrap_err().code, RetCode::IpNotFound);
    assert_eq!(allocate(&mut vpc, MAC1, Some("10.0.0.201")), Ok("10.0.0.201".into()));
    let back = [("Ip", "10.0.0.200"), ("OldMac", MAC2), ("NewMac", MAC1)];
    assert_eq!(call(&mut vpc, "MoveSecondaryIPMac", &back).unwrap_err().code, RetCode::QuotaExceeded);
}

#[test]
fn scope_and_parameters_are_checked() {
    let mut vpc = vpc(10);
    let mut p = params(&[("Mac", MAC1), ("ObjectId", "uhost-1")]);
    p.insert("Region".into(), "cn-elsewhere".into());
    assert_eq!(vpc.call("AllocateSecondaryIp", &p).unwrap().unwrap_err(), ApiError::param("Region"));
    assert_eq!(allocate(&mut vpc, "52:54:00:00:00:09", None), Err(RetCode::NoSuchNic));
    let err = call(&mut vpc, "AllocateSecondaryIp", &[("Mac", MAC1), ("ObjectId", "uhost-2")]).unwrap_err();
    assert_eq!(err.code, RetCode::NoSuchNic, "{err:?}");
    let err = call(&mut vpc, "AllocateSecondaryIp", &[("Mac", MAC1)]).unwrap_err();
    assert_eq!(err, ApiError::param("ObjectId"));
    assert!(vpc.call("CreateVPC", &params(&[])).is_none());
}
