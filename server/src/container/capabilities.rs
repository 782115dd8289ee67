//! Which capabilities a container gets.

use cri_proto::v1 as cri;

use runtime_handlers::DEFAULT_CAPABILITIES as DEFAULT_CAPS;

/// Every capability the kernel knows (for privileged containers and `ALL`).
fn all_caps() -> Vec<String> {
    let last = runtime_handlers::last_capability();
    runtime_handlers::CAPABILITIES
        .iter()
        .take(last as usize + 1)
        .map(|n| format!("CAP_{n}"))
        .collect()
}

/// The capability's bit number, for the names `all_caps` knows.
fn cap_number(name: &str) -> Option<u32> {
    runtime_handlers::capability_number(name).filter(|n| *n <= runtime_handlers::last_capability())
}

/// The capabilities a container gets: the default set (or every one for a privileged
/// container), the request's drops and adds, clipped to what the handler's side holds.
pub fn granted(
    security: &cri::LinuxContainerSecurityContext,
    host: &runtime_handlers::HostFacts,
) -> Vec<String> {
    let all = all_caps();
    let mut caps: Vec<String> = if security.privileged {
        all.clone()
    } else {
        DEFAULT_CAPS.iter().map(|c| (*c).to_owned()).collect()
    };
    let norm = |c: &str| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    // The creator's bounding set (crispd's, or a guest's): nothing outside it can be
    // granted, so grants are clipped to it, as containerd does.
    let bounding = host.bounding_set;
    if let Some(requested) = &security.capabilities {
        if requested
            .drop_capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case("ALL"))
        {
            caps.clear();
        }
        for c in &requested.drop_capabilities {
            let c = norm(c);
            caps.retain(|x| *x != c);
        }
        if requested
            .add_capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case("ALL"))
        {
            caps = all;
        } else {
            for c in &requested.add_capabilities {
                let c = norm(c);
                if !caps.contains(&c) {
                    caps.push(c);
                }
            }
        }
    }
    caps.retain(|c| cap_number(c).is_none_or(|n| n < 64 && bounding & (1 << n) != 0));
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_add_and_drop() {
        let mut security = cri::LinuxContainerSecurityContext::default();
        let host = runtime_handlers::HostFacts {
            bounding_set: u64::MAX,
            min_oom_score_adj: 0,
        };
        assert!(granted(&security, &host).contains(&"CAP_CHOWN".to_owned()));
        security.capabilities = Some(cri::Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        });
        assert_eq!(granted(&security, &host), ["CAP_NET_ADMIN"]);
        // Nothing outside the creator's bounding set is granted.
        let narrow = runtime_handlers::HostFacts {
            bounding_set: 1 << 1, // CAP_DAC_OVERRIDE only
            min_oom_score_adj: 0,
        };
        security.capabilities = Some(cri::Capability {
            add_capabilities: vec!["ALL".into()],
            ..Default::default()
        });
        assert_eq!(granted(&security, &narrow), ["CAP_DAC_OVERRIDE"]);
    }
}
