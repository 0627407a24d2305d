//! Kubernetes' RBAC rule matching, as the API server's authorizer does it
//! (`plugin/pkg/auth/authorizer/rbac/rbac.go`, `RuleAllows`), so tests can check the calls
//! the controller made against the rules the deployment grants it.

use k8s_openapi::api::rbac::v1::PolicyRule;

/// Whether any of `rules` lets a client `verb` the `resource` (optionally its
/// `subresource`, such as `status`) of API group `group` (`""` for the core group).
///
/// Matching is Kubernetes': a rule matches when its `verbs` hold `verb` or `*`, its
/// `apiGroups` hold `group` or `*`, and its `resources` hold `*`, the resource (with no
/// subresource), `resource/subresource`, or `*/subresource`; `resource` alone never grants
/// its subresources, nor `resource/status` the resource. `resourceNames` are ignored here (a
/// rule limited to some names counts as allowing), since the caller names no object; use
/// [`rbac_allows_named`] to check a call on a named object exactly.
pub fn rbac_allows(
    rules: &[PolicyRule],
    verb: &str,
    group: &str,
    resource: &str,
    subresource: Option<&str>,
) -> bool {
    rules
        .iter()
        .any(|rule| rule_matches(rule, verb, group, resource, subresource))
}

/// [`rbac_allows`] with the object's name as the API server sees it: `None` for calls on a
/// collection (`list`, `watch` without a field selector on the name, `create`,
/// `deletecollection`), which a rule with `resourceNames` never allows.
pub fn rbac_allows_named(
    rules: &[PolicyRule],
    verb: &str,
    group: &str,
    resource: &str,
    subresource: Option<&str>,
    name: Option<&str>,
) -> bool {
    rules.iter().any(|rule| {
        rule_matches(rule, verb, group, resource, subresource)
            && match rule.resource_names.as_deref() {
                None | Some([]) => true,
                Some(names) => name.is_some_and(|name| names.iter().any(|n| n == name)),
            }
    })
}

/// Verb, group and resource of one rule; not its `resourceNames`.
fn rule_matches(
    rule: &PolicyRule,
    verb: &str,
    group: &str,
    resource: &str,
    subresource: Option<&str>,
) -> bool {
    let subresource = subresource.filter(|s| !s.is_empty());
    let combined = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    let verbs = rule.verbs.iter().any(|v| v == "*" || v == verb);
    let groups = rule
        .api_groups
        .iter()
        .flatten()
        .any(|g| g == "*" || g == group);
    let resources = rule.resources.iter().flatten().any(|r| {
        r == "*"
            || *r == combined
            || subresource.is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
    });
    verbs && groups && resources
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        let strings = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        PolicyRule {
            api_groups: Some(strings(groups)),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            ..PolicyRule::default()
        }
    }

    #[test]
    fn verbs_groups_and_resources_must_all_match() {
        let rules = [rule(
            &["networking.k8s.io"],
            &["ingresses"],
            &["get", "list"],
        )];
        assert!(rbac_allows(
            &rules,
            "list",
            "networking.k8s.io",
            "ingresses",
            None
        ));
        assert!(!rbac_allows(
            &rules,
            "watch",
            "networking.k8s.io",
            "ingresses",
            None
        ));
        assert!(!rbac_allows(&rules, "list", "", "ingresses", None));
        assert!(!rbac_allows(
            &rules,
            "list",
            "networking.k8s.io",
            "ingressclasses",
            None
        ));
        assert!(!rbac_allows(&[], "get", "", "secrets", None));
    }

    #[test]
    fn the_core_group_is_the_empty_string() {
        let rules = [rule(&[""], &["secrets"], &["get"])];
        assert!(rbac_allows(&rules, "get", "", "secrets", None));
        assert!(!rbac_allows(&rules, "get", "apps", "secrets", None));
        let none = PolicyRule {
            api_groups: None,
            ..rule(&[], &["secrets"], &["get"])
        };
        assert!(!rbac_allows(&[none], "get", "", "secrets", None));
    }

    #[test]
    fn stars_match_everything_of_their_kind() {
        let rules = [rule(&["*"], &["*"], &["*"])];
        assert!(rbac_allows(&rules, "delete", "apps", "deployments", None));
        assert!(rbac_allows(
            &rules,
            "update",
            "networking.k8s.io",
            "ingresses",
            Some("status")
        ));
        let verbs = [rule(&[""], &["events"], &["*"])];
        assert!(rbac_allows(&verbs, "patch", "", "events", None));
        assert!(!rbac_allows(
            &verbs,
            "patch",
            "events.k8s.io",
            "events",
            None
        ));
    }

    #[test]
    fn subresources_are_granted_separately() {
        let status = [rule(
            &["networking.k8s.io"],
            &["ingresses/status"],
            &["update"],
        )];
        let g = "networking.k8s.io";
        assert!(rbac_allows(
            &status,
            "update",
            g,
            "ingresses",
            Some("status")
        ));
        assert!(!rbac_allows(&status, "update", g, "ingresses", None));
        let plain = [rule(&[g], &["ingresses"], &["update"])];
        assert!(!rbac_allows(
            &plain,
            "update",
            g,
            "ingresses",
            Some("status")
        ));
        // An empty subresource is no subresource.
        assert!(rbac_allows(&plain, "update", g, "ingresses", Some("")));
        let any_status = [rule(&[g], &["*/status"], &["update"])];
        assert!(rbac_allows(
            &any_status,
            "update",
            g,
            "ingresses",
            Some("status")
        ));
        assert!(!rbac_allows(&any_status, "update", g, "ingresses", None));
        assert!(!rbac_allows(
            &any_status,
            "update",
            g,
            "ingresses",
            Some("scale")
        ));
        // `*/status` names the subresource whole, not a suffix of it.
        let any_tus = [rule(&[g], &["*/tus"], &["update"])];
        assert!(!rbac_allows(
            &any_tus,
            "update",
            g,
            "ingresses",
            Some("status")
        ));
    }

    #[test]
    fn resource_names_are_ignored_unless_a_name_is_given() {
        let mut leases = rule(&["coordination.k8s.io"], &["leases"], &["get", "update"]);
        leases.resource_names = Some(vec!["portcullis-leader".into()]);
        let rules = [leases];
        let g = "coordination.k8s.io";
        assert!(rbac_allows(&rules, "get", g, "leases", None));
        assert!(rbac_allows_named(
            &rules,
            "get",
            g,
            "leases",
            None,
            Some("portcullis-leader")
        ));
        assert!(!rbac_allows_named(
            &rules,
            "get",
            g,
            "leases",
            None,
            Some("other")
        ));
        // A create or a list names no object, so a rule with names never allows it.
        assert!(!rbac_allows_named(&rules, "get", g, "leases", None, None));
        let open = [rule(&[g], &["leases"], &["create"])];
        assert!(rbac_allows_named(&open, "create", g, "leases", None, None));
    }
}
