use super::build::*;
use crate::{Options, Snapshot};

fn classless(name: &str) -> k8s_openapi::api::networking::v1::Ingress {
    ingress("default", name)
        .class(None)
        .rule(
            Some(&format!("{name}.example.com")),
            vec![prefix("/", "web")],
        )
        .build()
}

#[test]
fn class_name_picks_ours_and_ignores_others_silently() {
    let mut s = world(vec![
        ingress("default", "mine")
            .rule(Some("mine.example.com"), vec![prefix("/", "web")])
            .build(),
        ingress("default", "theirs")
            .class(Some("nginx"))
            .rule(Some("theirs.example.com"), vec![prefix("/", "missing")])
            .build(),
    ]);
    s.ingress_classes
        .push(class("nginx", "k8s.io/ingress-nginx", true).into());
    let t = run(&s);
    assert_eq!(names(&t), ["mine.example.com", crate::DEFAULT_SITE_HOST]);
    assert!(t.problems.is_empty(), "{:?}", problems(&t));
    assert_eq!(t.ingresses, [key("default", "mine")]);
}

#[test]
fn a_class_name_whose_class_is_not_ours_is_ignored() {
    // The class `portcullis` exists but belongs to another controller.
    let mut s = world(vec![
        ingress("default", "a")
            .rule(Some("a.example.com"), vec![prefix("/", "web")])
            .build(),
    ]);
    s.ingress_classes = vec![class("portcullis", "example.com/other", false).into()];
    let t = run(&s);
    assert_eq!(names(&t), [crate::DEFAULT_SITE_HOST]);
    assert!(t.ingresses.is_empty());
}

#[test]
fn a_class_of_ours_under_another_name() {
    let mut s = world(vec![
        ingress("default", "a")
            .class(Some("edge"))
            .rule(Some("a.example.com"), vec![prefix("/", "web")])
            .build(),
    ]);
    s.ingress_classes
        .push(class("edge", "portcullis.dev/ingress-controller", false).into());
    assert_eq!(run(&s).ingresses, [key("default", "a")]);
}

#[test]
fn legacy_annotation() {
    let s = world(vec![
        ingress("default", "legacy")
            .class(None)
            .annotation("kubernetes.io/ingress.class", "portcullis")
            .rule(Some("legacy.example.com"), vec![prefix("/", "web")])
            .build(),
        ingress("default", "nginx")
            .class(None)
            .annotation("kubernetes.io/ingress.class", "nginx")
            .rule(Some("nginx.example.com"), vec![prefix("/", "web")])
            .build(),
    ]);
    let t = run(&s);
    assert_eq!(t.ingresses, [key("default", "legacy")]);
    // The flag names the class the annotation must carry (the name of one of our
    // IngressClasses is accepted too, so clear them here).
    let mut s = s;
    s.ingress_classes.clear();
    let t = run_with(
        &s,
        &Options {
            ingress_class: "nginx".into(),
            ..Options::default()
        },
    );
    assert_eq!(t.ingresses, [key("default", "nginx")]);
}

#[test]
fn classless_ingresses_need_our_default_class_or_the_flag() {
    let s = world(vec![classless("a")]);
    assert!(run(&s).ingresses.is_empty());

    let mut with_default = s.clone();
    with_default.ingress_classes =
        vec![class("portcullis", "portcullis.dev/ingress-controller", true).into()];
    assert_eq!(run(&with_default).ingresses, [key("default", "a")]);

    // Another controller's default class does not make them ours.
    let mut other_default = s.clone();
    other_default
        .ingress_classes
        .push(class("nginx", "k8s.io/ingress-nginx", true).into());
    assert!(run(&other_default).ingresses.is_empty());

    let flag = Options {
        watch_ingress_without_class: true,
        ..Options::default()
    };
    assert_eq!(run_with(&s, &flag).ingresses, [key("default", "a")]);
}

#[test]
fn a_change_of_class_removes_the_routes() {
    let ours = world(vec![
        ingress("default", "a")
            .rule(Some("a.example.com"), vec![prefix("/", "web")])
            .build(),
    ]);
    assert!(names(&run(&ours)).contains(&"a.example.com"));
    let mut moved = ours.clone();
    moved.ingresses[0] = ingress("default", "a")
        .class(Some("nginx"))
        .rule(Some("a.example.com"), vec![prefix("/", "web")])
        .build()
        .into();
    let t = run(&moved);
    assert_eq!(names(&t), [crate::DEFAULT_SITE_HOST]);
    assert!(t.ingresses.is_empty());
    // Nothing at all: still a valid config with the default site.
    let t = run(&Snapshot::default());
    assert_eq!(names(&t), [crate::DEFAULT_SITE_HOST]);
}
