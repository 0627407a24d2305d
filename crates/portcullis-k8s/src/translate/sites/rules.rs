//! `spec.rules`: hosts and paths into routes, each backend into an action.

use k8s_openapi::api::networking::v1::{IngressBackend, IngressSpec};
use portcullis_config::{Action, HostPattern, PathMatch, Route, Upgrades};

use super::{ACME_CHALLENGE, Builder, Claimed, Redirects, parse_host};
use crate::snapshot::ObjectKey;
use crate::translate::annotations::Settings;
use crate::translate::backends;
use crate::translate::origins::Template;

/// A path as Ingress v1 means it: Exact as written, Prefix (and ImplementationSpecific)
/// without trailing slashes. Errors name the field below the path entry.
fn normalise_path(
    path: Option<&str>,
    path_type: &str,
) -> Result<(String, PathMatch), (&'static str, String)> {
    let path_match = match path_type {
        "Exact" => PathMatch::Exact,
        "Prefix" | "ImplementationSpecific" => PathMatch::Prefix,
        other => {
            return Err((
                ".pathType",
                format!("`{other}` is not Exact, Prefix or ImplementationSpecific"),
            ));
        }
    };
    let path = path.unwrap_or_default();
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') {
        return Err((".path", format!("`{path}` must start with `/`")));
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
    {
        return Err((
            ".path",
            format!("`{path}` must be a plain path (no `?`, `#`, spaces or control characters)"),
        ));
    }
    let path = match path_match {
        PathMatch::Exact => path,
        PathMatch::Prefix => match path.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        },
    };
    Ok((path.to_owned(), path_match))
}

fn is_acme_challenge(path: &str) -> bool {
    path == ACME_CHALLENGE
        || path
            .strip_prefix(ACME_CHALLENGE)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn match_name(m: PathMatch) -> &'static str {
    match m {
        PathMatch::Exact => "Exact",
        PathMatch::Prefix => "Prefix",
    }
}

/// A route with the Ingress's per-route settings.
pub(super) fn route(settings: &Settings, path: String, m: PathMatch, action: Action) -> Route {
    Route {
        path_match: m,
        rewrite: settings.rewrite.clone(),
        upgrades: if settings.websocket {
            Upgrades::default()
        } else {
            Upgrades::none()
        },
        access: settings.access.clone(),
        max_body_size: settings.max_body_size,
        ..Route::new(path, action)
    }
}

impl Builder<'_> {
    /// Merges the rules' paths; gives the valid hosts named and whether a rule has no host.
    pub(super) fn rules(
        &mut self,
        key: &ObjectKey,
        spec: &IngressSpec,
        settings: &Settings,
        template: &Template,
        redirects: Redirects,
    ) -> (Vec<HostPattern>, bool) {
        let key = key.clone();
        let mut hosts: Vec<HostPattern> = Vec::new();
        let mut hostless = false;
        for (i, rule) in spec.rules.iter().flatten().enumerate() {
            let host = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                None => {
                    hostless = true;
                    None
                }
                Some(text) => match parse_host(text) {
                    Ok(h) => {
                        if !hosts.contains(&h) {
                            hosts.push(h.clone());
                        }
                        Some(h)
                    }
                    Err(why) => {
                        self.problem(&key, format!("rules[{i}].host"), why);
                        continue;
                    }
                },
            };
            self.site(host.as_ref());
            let paths = rule
                .http
                .as_ref()
                .map(|h| h.paths.as_slice())
                .unwrap_or_default();
            for (j, path) in paths.iter().enumerate() {
                let pkey = format!("rules[{i}].http.paths[{j}]");
                let (p, m) = match normalise_path(path.path.as_deref(), &path.path_type) {
                    Ok(v) => v,
                    Err((field, why)) => {
                        self.problem(&key, format!("{pkey}{field}"), why);
                        continue;
                    }
                };
                let on = host
                    .as_ref()
                    .map_or_else(|| "rules without a host".to_owned(), ToString::to_string);
                let taken = self
                    .site(host.as_ref())
                    .routes
                    .get(&(p.clone(), m == PathMatch::Exact))
                    .map(|c| c.owner.clone());
                if let Some(owner) = taken {
                    let why = if owner == key {
                        format!("path {p} ({}) on {on} is listed twice", match_name(m))
                    } else {
                        format!(
                            "path {p} ({}) on {on} is already routed by ingress {owner}",
                            match_name(m)
                        )
                    };
                    self.problem(&key, pkey, why);
                    continue;
                }
                let Some(action) = self.action(
                    &key,
                    settings,
                    template,
                    &path.backend,
                    &format!("{pkey}.backend"),
                ) else {
                    continue;
                };
                let route = route(settings, p.clone(), m, action);
                let policy = if is_acme_challenge(&p) {
                    Redirects::Never
                } else {
                    redirects
                };
                self.site(host.as_ref()).routes.insert(
                    (p, m == PathMatch::Exact),
                    Claimed {
                        owner: key.clone(),
                        value: (route, policy),
                    },
                );
            }
        }

        (hosts, hostless)
    }

    /// What a backend does: the Ingress's redirect, else its Service's origin. A backend
    /// that names a missing Service or port gets an origin without servers (503), so its
    /// path stays claimed; a `resource` backend gets no route.
    pub(super) fn action(
        &mut self,
        key: &ObjectKey,
        settings: &Settings,
        template: &Template,
        backend: &IngressBackend,
        bkey: &str,
    ) -> Option<Action> {
        if let Some(redirect) = &settings.redirect {
            return Some(Action::Redirect(redirect.clone()));
        }
        match (&backend.service, &backend.resource) {
            (Some(service), _) => {
                let target = match backends::resolve(
                    &self.index,
                    &key.namespace,
                    service,
                    settings.service_upstream,
                ) {
                    Ok(t) => t,
                    Err((t, (field, why))) => {
                        self.problem(key, format!("{bkey}{field}"), why);
                        t
                    }
                };
                Some(Action::Proxy(Box::new(template.origin(target))))
            }
            (None, Some(_)) => {
                self.problem(
                    key,
                    format!("{bkey}.resource"),
                    "resource backends are not supported; use a Service",
                );
                None
            }
            (None, None) => {
                self.problem(key, bkey.to_owned(), "a backend needs a service");
                None
            }
        }
    }
}
