//! EC2's XML replies (Query protocol, API version 2016-11-15): lists are `<item>`s under a
//! `...Set` element, names are the local ones (the namespace is ignored). STS's
//! `AssumeRoleWithWebIdentity` reply (2011-06-15) too.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use roxmltree::{Document, Node};

/// An ENI as `DescribeNetworkInterfaces` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Eni {
    pub id: String,
    /// `available` (detached) or `in-use`.
    pub status: String,
    pub subnet_id: String,
    pub instance_id: Option<String>,
    pub device_index: Option<u32>,
    pub attachment_id: Option<String>,
    /// Lower case, as `/sys/class/net/*/address` has it.
    pub mac: String,
    pub primary_ip: Option<Ipv4Addr>,
    pub secondary: Vec<Ipv4Addr>,
    pub groups: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

/// A reply that is not XML is not EC2's.
pub fn parse(text: &str) -> Result<Document<'_>, String> {
    Document::parse(text).map_err(|e| format!("the reply is not XML: {e}"))
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

/// The text at `path` below `node`.
pub fn text<'a>(node: Node<'a, '_>, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(node, |n, name| child(n, name)).and_then(|n| n.text()).map(str::trim)
}

/// The `<item>`s of the list `name` directly below `node`.
fn items<'a, 'i>(node: Node<'a, 'i>, name: &str) -> impl Iterator<Item = Node<'a, 'i>> {
    child(node, name).into_iter().flat_map(|list| list.children().filter(|c| c.is_element()))
}

/// The first element called `name` anywhere in the document.
fn find<'a, 'i>(doc: &'a Document<'i>, name: &str) -> Option<Node<'a, 'i>> {
    doc.descendants().find(|n| n.is_element() && n.tag_name().name() == name)
}

/// The text of the first element called `name` anywhere.
pub fn first_text<'a>(doc: &'a Document<'_>, name: &str) -> Option<&'a str> {
    find(doc, name).and_then(|n| n.text()).map(str::trim)
}

/// An error reply's `Code` and `Message` (`<Response><Errors><Error>`).
pub fn error(text: &str) -> Option<(String, String)> {
    let doc = parse(text).ok()?;
    let error = find(&doc, "Error")?;
    let code = self::text(error, &["Code"])?.to_string();
    Some((code, self::text(error, &["Message"]).unwrap_or("").to_string()))
}

fn eni(node: Node<'_, '_>) -> Eni {
    let mut eni = Eni {
        id: text(node, &["networkInterfaceId"]).unwrap_or("").into(),
        status: text(node, &["status"]).unwrap_or("").into(),
        subnet_id: text(node, &["subnetId"]).unwrap_or("").into(),
        instance_id: text(node, &["attachment", "instanceId"]).map(Into::into),
        device_index: text(node, &["attachment", "deviceIndex"]).and_then(|s| s.parse().ok()),
        attachment_id: text(node, &["attachment", "attachmentId"]).map(Into::into),
        mac: text(node, &["macAddress"]).unwrap_or("").to_ascii_lowercase(),
        ..Eni::default()
    };
    for address in items(node, "privateIpAddressesSet") {
        let Some(ip) = text(address, &["privateIpAddress"]).and_then(|s| s.parse().ok()) else { continue };
        if text(address, &["primary"]) == Some("true") {
            eni.primary_ip = Some(ip);
        } else {
            eni.secondary.push(ip);
        }
    }
    eni.groups = items(node, "groupSet").filter_map(|g| text(g, &["groupId"])).map(Into::into).collect();
    for tag in items(node, "tagSet") {
        if let (Some(k), Some(v)) = (text(tag, &["key"]), text(tag, &["value"])) {
            eni.tags.insert(k.into(), v.into());
        }
    }
    eni
}

/// `DescribeNetworkInterfaces`.
pub fn network_interfaces(text: &str) -> Result<Vec<Eni>, String> {
    let doc = parse(text)?;
    let root = doc.root_element();
    Ok(items(root, "networkInterfaceSet").map(eni).collect())
}

/// `CreateNetworkInterface`: the new ENI.
pub fn created_interface(text: &str) -> Result<Eni, String> {
    let doc = parse(text)?;
    let node = child(doc.root_element(), "networkInterface").ok_or("no networkInterface in the reply")?;
    Ok(eni(node))
}

/// `AssignPrivateIpAddresses`: the addresses it assigned.
pub fn assigned_addresses(text: &str) -> Result<Vec<Ipv4Addr>, String> {
    let doc = parse(text)?;
    Ok(items(doc.root_element(), "assignedPrivateIpAddressesSet")
        .filter_map(|a| self::text(a, &["privateIpAddress"]).and_then(|s| s.parse().ok()))
        .collect())
}

/// `DescribeInstances`: the instance type of the only instance asked for.
pub fn instance_type(text: &str) -> Result<String, String> {
    let doc = parse(text)?;
    first_text(&doc, "instanceType").map(Into::into).ok_or_else(|| "no instanceType in the reply".into())
}

/// `DescribeInstanceTypes`: ENIs per instance and IPv4 addresses per ENI (primary included).
pub fn interface_limits(text: &str) -> Result<(usize, usize), String> {
    let doc = parse(text)?;
    let number = |name| first_text(&doc, name).and_then(|s| s.parse().ok()).ok_or(format!("no {name} in the reply"));
    Ok((number("maximumNetworkInterfaces")?, number("ipv4AddressesPerInterface")?))
}

/// The temporary keys of STS's `AssumeRoleWithWebIdentity` reply. `Debug` leaves them out.
#[derive(Clone, PartialEq, Eq)]
pub struct AssumedRole {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// RFC 3339, as STS writes it.
    pub expiration: String,
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`.
    pub assumed_arn: Option<String>,
}

impl std::fmt::Debug for AssumedRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssumedRole").field("assumed_arn", &self.assumed_arn).finish_non_exhaustive()
    }
}

/// `AssumeRoleWithWebIdentityResult`: its `Credentials` and `AssumedRoleUser/Arn`. The error
/// names what is missing, never a value.
pub fn assumed_role(text: &str) -> Result<AssumedRole, String> {
    let doc = parse(text)?;
    let credentials = find(&doc, "Credentials").ok_or("no Credentials in the reply")?;
    let field = |name: &str| {
        self::text(credentials, &[name])
            .filter(|v| !v.is_empty())
            .map(String::from)
            .ok_or(format!("no Credentials/{name} in the reply"))
    };
    Ok(AssumedRole {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: field("SessionToken")?,
        expiration: field("Expiration")?,
        assumed_arn: find(&doc, "AssumedRoleUser").and_then(|u| self::text(u, &["Arn"])).map(String::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIBED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeNetworkInterfacesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r-1</requestId>
  <networkInterfaceSet>
    <item>
      <networkInterfaceId>eni-0a</networkInterfaceId>
      <subnetId>subnet-1</subnetId>
      <status>in-use</status>
      <attachment><attachmentId>eni-attach-1</attachmentId><instanceId>i-1</instanceId><deviceIndex>1</deviceIndex></attachment>
      <groupSet><item><groupId>sg-1</groupId><groupName>default</groupName></item></groupSet>
      <tagSet><item><key>node.k8s.amazonaws.com/instance_id</key><value>i-1</value></item></tagSet>
      <privateIpAddressesSet>
        <item><privateIpAddress>10.0.1.5</privateIpAddress><primary>true</primary></item>
        <item><privateIpAddress>10.0.1.6</privateIpAddress><primary>false</primary></item>
      </privateIpAddressesSet>
    </item>
    <item><networkInterfaceId>eni-0b</networkInterfaceId><status>available</status></item>
  </networkInterfaceSet>
</DescribeNetworkInterfacesResponse>"#;

    #[test]
    fn network_interfaces_are_read() {
        let enis = network_interfaces(DESCRIBED).unwrap();
        assert_eq!(enis.len(), 2);
        let a = &enis[0];
        assert_eq!((a.id.as_str(), a.status.as_str(), a.device_index), ("eni-0a", "in-use", Some(1)));
        assert_eq!(a.attachment_id.as_deref(), Some("eni-attach-1"));
        assert_eq!(a.primary_ip, Some(Ipv4Addr::new(10, 0, 1, 5)));
        assert_eq!(a.secondary, vec![Ipv4Addr::new(10, 0, 1, 6)]);
        assert_eq!(a.groups, vec!["sg-1".to_string()]);
        assert_eq!(a.tags["node.k8s.amazonaws.com/instance_id"], "i-1");
        assert_eq!((enis[1].status.as_str(), enis[1].instance_id.as_ref()), ("available", None));
    }

    #[test]
    fn errors_and_limits() {
        let refused = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit \
                       exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>";
        assert_eq!(error(refused), Some(("RequestLimitExceeded".into(), "Request limit exceeded.".into())));
        assert_eq!(error("<a>not an error</a>"), None);
        let types = "<DescribeInstanceTypesResponse><instanceTypeSet><item><instanceType>t3.small</instanceType>\
                     <networkInfo><maximumNetworkInterfaces>3</maximumNetworkInterfaces>\
                     <ipv4AddressesPerInterface>4</ipv4AddressesPerInterface></networkInfo></item>\
                     </instanceTypeSet></DescribeInstanceTypesResponse>";
        assert_eq!(interface_limits(types).unwrap(), (3, 4));
        let assigned = "<AssignPrivateIpAddressesResponse><networkInterfaceId>eni-1</networkInterfaceId>\
                        <assignedPrivateIpAddressesSet><item><privateIpAddress>10.0.1.9</privateIpAddress></item>\
                        </assignedPrivateIpAddressesSet></AssignPrivateIpAddressesResponse>";
        assert_eq!(assigned_addresses(assigned).unwrap(), vec![Ipv4Addr::new(10, 0, 1, 9)]);
        assert!(network_interfaces("{json}").is_err());
    }

    #[test]
    fn an_assumed_roles_keys_are_read_and_never_printed() {
        let reply = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials><AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>s3cr3t/key+</SecretAccessKey>
      <SessionToken>FQoGZXIvYXdzEBYa</SessionToken><Expiration>2026-12-07T02:09:44.298742Z</Expiration></Credentials>
    <AssumedRoleUser><AssumedRoleId>ARO1:s1</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/cni/s1</Arn></AssumedRoleUser>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;
        let role = assumed_role(reply).unwrap();
        assert_eq!((role.access_key_id.as_str(), role.secret_access_key.as_str()), ("ASIAEXAMPLE", "s3cr3t/key+"));
        assert_eq!(
            (role.session_token.as_str(), role.expiration.as_str()),
            ("FQoGZXIvYXdzEBYa", "2026-12-07T02:09:44.298742Z")
        );
        assert_eq!(role.assumed_arn.as_deref(), Some("arn:aws:sts::123456789012:assumed-role/cni/s1"));
        assert!(!format!("{role:?}").contains("s3cr3t") && !format!("{role:?}").contains("FQoG"));
        let no_token = reply.replace("<SessionToken>FQoGZXIvYXdzEBYa</SessionToken>", "");
        assert_eq!(assumed_role(&no_token).unwrap_err(), "no Credentials/SessionToken in the reply");
        let refused = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
                       <Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider found</Message></Error>\
                       <RequestId>r</RequestId></ErrorResponse>";
        assert_eq!(error(refused), Some(("InvalidIdentityToken".into(), "No OpenIDConnect provider found".into())));
    }
}
