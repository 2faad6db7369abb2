//! EC2's XML replies (Query protocol, API version 2016-11-15): lists are `<item>`s under a
//! `...Set` element, names are the local ones (the namespace is ignored).

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
}
