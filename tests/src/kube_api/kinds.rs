//! The resources the fake serves: one row per resource, as the real API server's REST
//! strategies define them. Adding a kind is adding a row.

/// How a resource's object names are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 characters.
    Subdomain,
    /// DNS-1123 label: lowercase alphanumerics and `-`, at most 63 characters.
    Label,
}

/// One resource (a group, version and plural name).
#[derive(Debug)]
pub(crate) struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Has a `/status` subresource: writes to the main resource keep the stored status, and
    /// create starts with an empty status.
    pub status: bool,
    /// Field selectors this resource accepts besides `metadata.name` and
    /// `metadata.namespace`.
    pub fields: &'static [&'static str],
    pub name_rule: NameRule,
    /// A PUT without `metadata.resourceVersion` is allowed (the strategy's
    /// `AllowUnconditionalUpdate`); Leases refuse it.
    pub unconditional_update: bool,
    /// A PUT of a missing object creates it (`AllowCreateOnUpdate`).
    pub create_on_update: bool,
}

impl Kind {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource as an error's `details` name it: `ingresses.networking.k8s.io`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn kind(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
) -> Kind {
    Kind {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names: &[],
        status: false,
        fields: &[],
        name_rule: NameRule::Subdomain,
        unconditional_update: true,
        create_on_update: false,
    }
}

/// Every resource served. Lookups go through [`find`].
pub(crate) static KINDS: &[Kind] = &[
    Kind {
        short_names: &["ns"],
        status: true,
        name_rule: NameRule::Label,
        ..kind("", "Namespace", "namespaces", "namespace", false)
    },
    Kind {
        short_names: &["svc"],
        status: true,
        name_rule: NameRule::Label,
        ..kind("", "Service", "services", "service", true)
    },
    Kind {
        short_names: &["ep"],
        create_on_update: true,
        ..kind("", "Endpoints", "endpoints", "endpoints", true)
    },
    Kind {
        fields: &["type"],
        ..kind("", "Secret", "secrets", "secret", true)
    },
    Kind {
        short_names: &["cm"],
        ..kind("", "ConfigMap", "configmaps", "configmap", true)
    },
    Kind {
        short_names: &["ev"],
        fields: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        create_on_update: true,
        ..kind("", "Event", "events", "event", true)
    },
    Kind {
        short_names: &["sa"],
        ..kind(
            "",
            "ServiceAccount",
            "serviceaccounts",
            "serviceaccount",
            true,
        )
    },
    Kind {
        short_names: &["po"],
        status: true,
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
        ],
        ..kind("", "Pod", "pods", "pod", true)
    },
    kind(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
    ),
    Kind {
        short_names: &["ing"],
        status: true,
        ..kind("networking.k8s.io", "Ingress", "ingresses", "ingress", true)
    },
    kind(
        "networking.k8s.io",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
        false,
    ),
    Kind {
        unconditional_update: false,
        ..kind("coordination.k8s.io", "Lease", "leases", "lease", true)
    },
    Kind {
        short_names: &["ev"],
        fields: &["reason", "regarding.kind", "regarding.name", "type"],
        create_on_update: true,
        ..kind("events.k8s.io", "Event", "events", "event", true)
    },
    Kind {
        short_names: &["deploy"],
        status: true,
        ..kind("apps", "Deployment", "deployments", "deployment", true)
    },
    Kind {
        short_names: &["pdb"],
        status: true,
        ..kind(
            "policy",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            "poddisruptionbudget",
            true,
        )
    },
    kind(
        "rbac.authorization.k8s.io",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
    ),
    kind(
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
    ),
    kind("rbac.authorization.k8s.io", "Role", "roles", "role", true),
    kind(
        "rbac.authorization.k8s.io",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
    ),
];

/// The index in [`KINDS`] of `group`/`version`/`plural`.
pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    KINDS
        .iter()
        .position(|k| k.group == group && k.version == version && k.plural == plural)
}

/// The index of the namespaces resource, which every namespaced create consults.
pub(crate) fn namespaces() -> usize {
    find("", "v1", "namespaces").expect("namespaces is the first row of KINDS")
}

/// The API groups served (besides the core group), in the order `/apis` lists them.
pub(crate) fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for k in KINDS {
        if !k.group.is_empty() && !groups.contains(&k.group) {
            groups.push(k.group);
        }
    }
    groups
}
