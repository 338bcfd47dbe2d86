//! Router worker placement as a pure function: every worker group's `scale` workers spread over
//! the online members, least-loaded first, never above a member's `hardlimit`, members under
//! `softlimit` first. Healthy placements never move; placements on offline or removed members
//! and drained members are re-placed; surplus placements (scale lowered) are dropped.

use std::collections::{BTreeMap, BTreeSet};

/// A member node as placement sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// The node's oid.
    pub node: String,
    /// The node's authid (tie-breaker, for stable results).
    pub authid: String,
    /// Preferred maximum.
    pub softlimit: Option<u32>,
    /// Hard maximum.
    pub hardlimit: Option<u32>,
    /// Online now.
    pub online: bool,
    /// Drained: no placements (its placements are moved to other members).
    pub drained: bool,
}

/// A worker group.
#[derive(Debug, Clone)]
pub struct Group {
    /// The group's oid.
    pub oid: String,
    /// The group's name (worker ids are `<name>_<n>`).
    pub name: String,
    /// Number of workers.
    pub scale: u32,
}

/// A placement: worker `worker` of group `group` on `node`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    /// The group's oid.
    pub group: String,
    /// The worker id.
    pub worker: String,
    /// The node's oid.
    pub node: String,
}

/// The outcome of placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placed {
    /// Every placement that should exist now.
    pub slots: Vec<Slot>,
    /// Workers that found no member within its limits.
    pub unplaced: Vec<String>,
}

/// Worker id `n` of group `name`.
pub fn worker_id(group: &str, n: u32) -> String {
    format!("{group}_{n}")
}

/// Places every group's workers, keeping `existing` placements that are still valid.
pub fn place(groups: &[Group], members: &[Member], existing: &[Slot]) -> Placed {
    let online: BTreeMap<&str, &Member> = members
        .iter()
        .filter(|m| m.online && !m.drained)
        .map(|m| (m.node.as_str(), m))
        .collect();
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for g in groups {
        for n in 0..g.scale {
            wanted.insert((g.oid.clone(), worker_id(&g.name, n)));
        }
    }
    let mut load: BTreeMap<&str, u32> = online.keys().map(|n| (*n, 0)).collect();
    let mut slots = Vec::new();
    let mut kept: BTreeSet<(String, String)> = BTreeSet::new();
    for s in existing {
        let key = (s.group.clone(), s.worker.clone());
        if wanted.contains(&key) && !kept.contains(&key) && online.contains_key(s.node.as_str()) {
            *load.get_mut(s.node.as_str()).expect("online") += 1;
            kept.insert(key);
            slots.push(s.clone());
        }
    }
    let mut unplaced = Vec::new();
    for (group, worker) in wanted.iter().filter(|k| !kept.contains(*k)) {
        let best = online
            .values()
            .filter(|m| m.hardlimit.is_none_or(|h| load[m.node.as_str()] < h))
            .min_by_key(|m| {
                let l = load[m.node.as_str()];
                let over_soft = m.softlimit.is_some_and(|s| l >= s);
                (over_soft, l, m.authid.clone())
            });
        match best {
            Some(m) => {
                *load.get_mut(m.node.as_str()).expect("online") += 1;
                slots.push(Slot {
                    group: group.clone(),
                    worker: worker.clone(),
                    node: m.node.clone(),
                });
            }
            None => unplaced.push(worker.clone()),
        }
    }
    slots.sort();
    Placed { slots, unplaced }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: &str, soft: Option<u32>, hard: Option<u32>, online: bool) -> Member {
        Member {
            node: n.into(),
            authid: n.into(),
            softlimit: soft,
            hardlimit: hard,
            online,
            drained: false,
        }
    }

    #[test]
    fn a_drained_member_gets_nothing_and_loses_its_placements() {
        let mut members = vec![member("a", None, None, true), member("b", None, None, true)];
        let g = [Group {
            oid: "g".into(),
            name: "grp".into(),
            scale: 2,
        }];
        let first = place(&g, &members, &[]);
        assert_eq!(per_node(&first).len(), 2);
        members[0].drained = true;
        let second = place(&g, &members, &first.slots);
        assert!(second.slots.iter().all(|s| s.node == "b"), "{second:?}");
        assert!(second.unplaced.is_empty());
        // Undrained: eligible again, but nothing healthy moves back.
        members[0].drained = false;
        assert_eq!(place(&g, &members, &second.slots).slots, second.slots);
    }

    fn per_node(p: &Placed) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in &p.slots {
            *m.entry(s.node.clone()).or_insert(0) += 1;
        }
        m
    }

    #[test]
    fn spreads_least_loaded_within_hardlimits() {
        let members = [
            member("a", None, Some(2), true),
            member("b", None, Some(2), true),
            member("c", None, Some(2), true),
        ];
        let g = [Group {
            oid: "g".into(),
            name: "grp".into(),
            scale: 4,
        }];
        let p = place(&g, &members, &[]);
        let counts: Vec<usize> = per_node(&p).values().copied().collect();
        assert_eq!(counts, [2, 1, 1]);
        assert!(p.unplaced.is_empty());
    }

    #[test]
    fn re_places_off_a_dead_node_and_keeps_healthy_placements() {
        let mut members = vec![
            member("a", None, Some(2), true),
            member("b", None, Some(2), true),
            member("c", None, Some(2), true),
        ];
        let g = [Group {
            oid: "g".into(),
            name: "grp".into(),
            scale: 4,
        }];
        let first = place(&g, &members, &[]);
        members[0].online = false;
        let second = place(&g, &members, &first.slots);
        assert!(second.slots.iter().all(|s| s.node != "a"));
        assert_eq!(
            per_node(&second).values().copied().collect::<Vec<_>>(),
            [2, 2]
        );
        for s in first.slots.iter().filter(|s| s.node != "a") {
            assert!(second.slots.contains(s), "healthy placement {s:?} moved");
        }
        // The node returns: nothing moves.
        members[0].online = true;
        assert_eq!(place(&g, &members, &second.slots).slots, second.slots);
    }

    #[test]
    fn never_exceeds_hardlimit_and_reports_what_cannot_be_placed() {
        let members = [
            member("a", None, Some(1), true),
            member("b", None, Some(1), true),
        ];
        let g = [Group {
            oid: "g".into(),
            name: "grp".into(),
            scale: 3,
        }];
        let p = place(&g, &members, &[]);
        assert_eq!(p.slots.len(), 2);
        assert_eq!(p.unplaced, ["grp_2"]);
    }

    #[test]
    fn prefers_members_under_softlimit() {
        let members = [
            member("a", Some(1), None, true),
            member("b", Some(3), None, true),
        ];
        let g = [Group {
            oid: "g".into(),
            name: "grp".into(),
            scale: 3,
        }];
        let p = place(&g, &members, &[]);
        assert_eq!(
            per_node(&p),
            [("a".to_string(), 1), ("b".to_string(), 2)].into()
        );
    }

    #[test]
    fn scale_down_drops_the_highest_workers() {
        let members = [member("a", None, None, true)];
        let big = place(
            &[Group {
                oid: "g".into(),
                name: "grp".into(),
                scale: 3,
            }],
            &members,
            &[],
        );
        let small = place(
            &[Group {
                oid: "g".into(),
                name: "grp".into(),
                scale: 1,
            }],
            &members,
            &big.slots,
        );
        assert_eq!(
            small
                .slots
                .iter()
                .map(|s| s.worker.as_str())
                .collect::<Vec<_>>(),
            ["grp_0"]
        );
    }
}
