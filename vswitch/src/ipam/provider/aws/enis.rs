//! This instance's ENIs as the provider keeps them between calls, and the rules AWS's VPC CNI
//! applies to them: which ENI gets the next address, the next device index, which detached
//! ENIs are leaked, and the `createdAt` tag's time.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::xml::Eni;

/// ENIs created for this instance carry its id (AWS's VPC CNI's tag).
pub const INSTANCE_TAG: &str = "node.k8s.amazonaws.com/instance_id";
/// When the ENI was created, RFC 3339.
pub const CREATED_AT_TAG: &str = "node.k8s.amazonaws.com/createdAt";
/// The cluster (`CLUSTER_NAME`).
pub const CLUSTER_TAG: &str = "cluster.k8s.amazonaws.com/name";
/// ENIs tagged so (value `true`) are left alone.
pub const NO_MANAGE_TAG: &str = "node.k8s.amazonaws.com/no_manage";
/// The description of created ENIs, followed by the instance id.
pub const DESCRIPTION_PREFIX: &str = "aws-K8S-";

/// The instance, its type's limits and its managed ENIs.
#[derive(Debug, Clone)]
pub struct Node {
    pub instance_id: String,
    pub instance_type: String,
    /// ENIs the instance may have (the type's limit, or `MAX_ENI` if lower).
    pub max_enis: usize,
    /// Secondary addresses per ENI (the type's IPv4 addresses per interface less the primary).
    pub per_eni: usize,
    /// Security groups of new ENIs.
    pub groups: Vec<String>,
    /// The attached ENIs this node manages, by device index.
    pub enis: Vec<Eni>,
}

impl Node {
    /// Keeps the attached, managed ENIs of `described`, by device index.
    pub fn set_enis(&mut self, described: Vec<Eni>) {
        let mut enis: Vec<Eni> = described
            .into_iter()
            .filter(|e| e.instance_id.as_deref() == Some(self.instance_id.as_str()))
            .filter(|e| e.tags.get(NO_MANAGE_TAG).map(String::as_str) != Some("true"))
            .collect();
        enis.sort_by_key(|e| e.device_index.unwrap_or(u32::MAX));
        self.enis = enis;
    }

    /// The first ENI (lowest device index) with room for another secondary address.
    pub fn with_room(&self) -> Option<usize> {
        self.enis.iter().position(|e| e.secondary.len() < self.per_eni)
    }

    /// Whether the instance may attach another ENI.
    pub fn may_attach(&self) -> bool {
        self.enis.len() < self.max_enis
    }

    /// The lowest device index no attached ENI has.
    pub fn next_device_index(&self) -> u32 {
        (0..).find(|i| !self.enis.iter().any(|e| e.device_index == Some(*i))).expect("a free index")
    }

    /// The ENI holding `ip` as a secondary address.
    pub fn holding(&self, ip: Ipv4Addr) -> Option<usize> {
        self.enis.iter().position(|e| e.secondary.contains(&ip))
    }

    /// Secondary addresses the instance may hold in all.
    pub fn capacity(&self) -> usize {
        self.max_enis * self.per_eni
    }
}

/// Whether a described ENI is a leak to delete: detached, created by this instance (or, with a
/// cluster name, by any node of the cluster) and older than `age` by its `createdAt` tag.
pub fn is_leaked(eni: &Eni, instance_id: &str, cluster: Option<&str>, age: Duration, now: SystemTime) -> bool {
    let ours = eni.tags.get(INSTANCE_TAG).is_some_and(|i| i == instance_id)
        || cluster.is_some_and(|c| eni.tags.get(CLUSTER_TAG).is_some_and(|t| t == c));
    let created = eni.tags.get(CREATED_AT_TAG).and_then(|t| parse_rfc3339(t));
    let old = created.is_some_and(|t| now.duration_since(t).is_ok_and(|d| d >= age));
    eni.status == "available" && ours && old
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `time` as RFC 3339 in UTC (`2026-12-06T18:40:00.000Z`), as the `createdAt` tag says it.
pub fn rfc3339(time: SystemTime) -> String {
    cni::log::timestamp(time)
}

/// An RFC 3339 time (`Z` or `±HH:MM`; fractions ignored).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (rest.get(1..3)?.parse::<i64>().ok()? * 3600 + rest.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(id: &str, index: u32, secondary: usize) -> Eni {
        Eni {
            id: id.into(),
            status: "in-use".into(),
            instance_id: Some("i-1".into()),
            device_index: Some(index),
            secondary: (0..secondary).map(|i| Ipv4Addr::new(10, 0, index as u8, i as u8 + 10)).collect(),
            ..Eni::default()
        }
    }

    #[test]
    fn the_next_address_goes_to_the_first_eni_with_room() {
        let mut node = Node {
            instance_id: "i-1".into(),
            instance_type: "t3.small".into(),
            max_enis: 3,
            per_eni: 3,
            groups: vec![],
            enis: vec![],
        };
        let mut other = eni("eni-other", 1, 0);
        other.instance_id = Some("i-2".into());
        let mut unmanaged = eni("eni-unmanaged", 3, 0);
        unmanaged.tags.insert(NO_MANAGE_TAG.into(), "true".into());
        node.set_enis(vec![eni("eni-2", 2, 1), eni("eni-0", 0, 3), other, unmanaged]);
        let ids: Vec<&str> = node.enis.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["eni-0", "eni-2"]);
        assert_eq!(node.with_room(), Some(1), "eni-0 is full");
        assert_eq!(node.next_device_index(), 1);
        assert!(node.may_attach());
        assert_eq!(node.holding(Ipv4Addr::new(10, 0, 2, 10)), Some(1));
        node.enis[1].secondary.extend([Ipv4Addr::new(10, 0, 2, 11), Ipv4Addr::new(10, 0, 2, 12)]);
        assert_eq!(node.with_room(), None);
        assert_eq!(node.capacity(), 9);
    }

    #[test]
    fn times_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_582_400);
        assert_eq!(rfc3339(t), "2026-12-06T18:40:00.000Z");
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(parse_rfc3339("2026-12-06T18:40:00Z"), Some(t));
        assert_eq!(parse_rfc3339("2026-12-06T19:40:00.123+01:00"), Some(t));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z").map(rfc3339).as_deref(), Some("2024-02-29T00:00:00.000Z"));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn leaked_enis_are_detached_ours_and_old() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_582_400);
        let age = Duration::from_secs(300);
        let tagged = |instance: &str, created: SystemTime, status: &str| {
            let mut e = Eni { id: "eni-l".into(), status: status.into(), ..Eni::default() };
            e.tags.insert(INSTANCE_TAG.into(), instance.into());
            e.tags.insert(CREATED_AT_TAG.into(), rfc3339(created));
            e.tags.insert(CLUSTER_TAG.into(), "lab".into());
            e
        };
        let old = now - Duration::from_secs(600);
        assert!(is_leaked(&tagged("i-1", old, "available"), "i-1", None, age, now));
        assert!(!is_leaked(&tagged("i-1", now - Duration::from_secs(60), "available"), "i-1", None, age, now));
        assert!(!is_leaked(&tagged("i-1", old, "in-use"), "i-1", None, age, now));
        assert!(!is_leaked(&tagged("i-2", old, "available"), "i-1", None, age, now));
        assert!(is_leaked(&tagged("i-2", old, "available"), "i-1", Some("lab"), age, now), "the cluster's");
        let mut untimed = tagged("i-1", old, "available");
        untimed.tags.remove(CREATED_AT_TAG);
        assert!(!is_leaked(&untimed, "i-1", None, age, now));
    }
}
