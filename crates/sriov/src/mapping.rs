use crate::Error;

/// One `PHYSNET:PF_NETDEV` pair of Neutron's SR-IOV agent `physical_device_mappings`: the PF
/// whose VFs are ports on that physnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMapping {
    pub physnet: String,
    pub pf: String,
}

/// Parses `physical_device_mappings` entries, each `physnet1:eth1` or, as Neutron writes
/// them, a comma list `physnet1:eth1,physnet2:eth2`. A physnet may map to several PFs; a PF
/// belongs to one physnet (a pair given twice counts once). The pairs in the order given.
pub fn parse_device_mappings(entries: &[String]) -> Result<Vec<DeviceMapping>, Error> {
    let mut out: Vec<DeviceMapping> = Vec::new();
    for entry in entries {
        for item in entry.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = |why: String| Error::BadMapping {
                entry: item.to_string(),
                why,
            };
            let shape = || bad(r#"expected PHYSNET:PF_NETDEV, e.g. "physnet1:eth1""#.to_string());
            let (physnet, pf) = item.split_once(':').ok_or_else(shape)?;
            let (physnet, pf) = (physnet.trim(), pf.trim());
            if physnet.is_empty() || pf.is_empty() || pf.contains(':') {
                return Err(shape());
            }
            if physnet.chars().any(char::is_whitespace) {
                return Err(bad(format!(
                    "physnet {physnet:?} has white space; write the name Neutron's \
                     provider:physical_network has, e.g. \"physnet1:{pf}\""
                )));
            }
            if pf.len() > 15 || pf.contains('/') || pf.chars().any(char::is_whitespace) {
                return Err(bad(format!(
                    "{pf:?} is no network device name (1 to 15 characters, no '/' or white \
                     space); write the PF's netdev as `ip link` shows it, e.g. \"{physnet}:eth1\""
                )));
            }
            match out.iter().find(|m| m.pf == pf) {
                Some(m) if m.physnet == physnet => continue,
                Some(m) => {
                    return Err(bad(format!(
                        "PF {pf} is already mapped to physnet {}; a PF carries one physnet \
                         (give each physnet its own PFs)",
                        m.physnet
                    )))
                }
                None => out.push(DeviceMapping {
                    physnet: physnet.to_string(),
                    pf: pf.to_string(),
                }),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[&str]) -> Result<Vec<(String, String)>, Error> {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        Ok(parse_device_mappings(&entries)?
            .into_iter()
            .map(|m| (m.physnet, m.pf))
            .collect())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn good_mappings() {
        assert_eq!(parse(&[]).unwrap(), vec![]);
        assert_eq!(
            parse(&["physnet1:eth1"]).unwrap(),
            pairs(&[("physnet1", "eth1")])
        );
        assert_eq!(
            parse(&[
                "physnet1:eth1, physnet2:eth2,",
                "physnet1:ens1f0",
                "physnet1:eth1"
            ])
            .unwrap(),
            pairs(&[
                ("physnet1", "eth1"),
                ("physnet2", "eth2"),
                ("physnet1", "ens1f0")
            ])
        );
    }

    #[test]
    fn bad_mappings() {
        let e = parse(&["eth1"]).unwrap_err();
        assert!(matches!(e, Error::BadMapping { .. }));
        assert_eq!(
            e.to_string(),
            r#"[sriov] physical_device_mappings entry "eth1": expected PHYSNET:PF_NETDEV, e.g. "physnet1:eth1""#
        );
        for bad in [
            "physnet1:",
            ":eth1",
            "physnet1:eth1:eth2",
            "physnet1:eth1,eth2",
        ] {
            let e = parse(&[bad]).unwrap_err().to_string();
            assert!(e.contains("expected PHYSNET:PF_NETDEV"), "{bad}: {e}");
        }
        let e = parse(&["physnet1:eth1", "physnet2:eth1"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "[sriov] physical_device_mappings entry \"physnet2:eth1\": PF eth1 is already \
             mapped to physnet physnet1; a PF carries one physnet (give each physnet its own PFs)"
        );
        let e = parse(&["physnet1:averyveryverylongname"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no network device name"), "{e}");
        let e = parse(&["phys net:eth1"]).unwrap_err().to_string();
        assert!(e.contains("white space"), "{e}");
    }
}
